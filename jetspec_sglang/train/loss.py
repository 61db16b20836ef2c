"""Forward KL(p_target || q_draft) against a top-K + rest teacher, with the student's full-vocabulary softmax.

The teacher at a supervised slot is the target's next-token distribution coarsened to its top-K tokens plus one
"rest" bucket (cache.py). The student q = softmax(lm_head(h)) over the whole vocabulary is coarsened the same way,
and the loss is the exact KL between the two coarsened distributions:
    kl = sum_k p_k (log p_k - log q_k) + p_rest (log p_rest - log q_rest),   q_rest = 1 - sum_k q_k.
It is >= 0, and 0 iff q equals p on every top-K token and on the rest mass (with K = V: iff q == p).
`forward_kl_ref` is the plain autograd version. `forward_kl_fused` is its fast twin: the borrowed (frozen) lm_head is
applied in row chunks and the gradient w.r.t. the hidden state is formed in the same pass, so no [N, V] tensor is
kept for backward (the lm_head is the bottleneck of CPU training, models-and-data.md 5.2):
    dkl/dz_j = q_j * (P_top + p_rest) - p_j [j in top] - (p_rest / q_rest) q_j [j not in top].
The fused path multiplies in bf16 (AMX) with fp32 softmax; the reference multiplies in the input dtype.

`SampledVocab` makes a step ~5x cheaper on a 49k vocabulary: the student's logits are computed only for an exact set
(the cache's most frequent teacher tokens plus every teacher top-K token of the step) and for m tail tokens drawn
uniformly, without replacement, from the rest; each drawn tail logit stands for |tail| / m tokens. The top-K terms
are exact, the rest mass q_rest is estimated, and the gradient is the exact gradient of that estimate (sampled
softmax with an exact head). With m = |tail| it is the full-vocabulary loss again (tested). Evaluation always uses
the full vocabulary. jetspec-method.md 8 (loss pseudo-code). Imports no sglang.
"""
from __future__ import annotations

import dataclasses
import math

import torch

NEG_INF = -math.inf


def depth_weights(depth: int, gamma: float | None) -> torch.Tensor:
    """w_L (fp32) for depths 1..L: uniform when gamma is None or 0, else exp(-(k-1)/gamma). (3, 1.0) -> [1, .37, .14]."""
    if not gamma:
        return torch.ones(depth)
    return torch.exp(-torch.arange(depth, dtype=torch.float32) / gamma)


def mix_hard_label(teacher_logp_NX: torch.Tensor, lam: float, teacher_rest_N: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log of (1 - lam) p + lam onehot(argmax p) row-wise, its rest bucket) in fp32 or wider: the teacher of
    `--hard-mix lam`.

    The KL to this mixture has the gradient of (1 - lam) KL(p || q) + lam CE(argmax p, q): the draft is pulled
    toward the target's greedy token, which is what greedy verification accepts, while it still learns the rest of
    the distribution that the tree's other branches draw from. Works on a full-vocabulary row (no rest: None back)
    and on the cache's top-K columns, whose argmax is the target's and whose rest bucket (log mass outside them) is
    scaled by 1 - lam too. 0 <= lam < 1 (at 1 the other entries would be log 0, and 0 log 0 is not 0 in the KL);
    lam 0 gives p back. ([log .6, log .4], .5) -> [log .8, log .2].
    """
    logp = teacher_logp_NX.to(torch.promote_types(teacher_logp_NX.dtype, torch.float32))
    rest = None if teacher_rest_N is None else teacher_rest_N.to(logp.dtype)
    if not lam:
        return logp, rest
    logp = logp + math.log1p(-lam)
    top_N = teacher_logp_NX.argmax(-1, keepdim=True)
    log_lam = torch.tensor(math.log(lam), dtype=logp.dtype, device=logp.device)
    mixed = logp.scatter(-1, top_N, torch.logaddexp(logp.gather(-1, top_N), log_lam))
    return mixed, None if rest is None else rest + math.log1p(-lam)


def _coarse_kl(logq_NK: torch.Tensor, logq_rest_N: torch.Tensor, logp_NK: torch.Tensor,
               logp_rest_N: torch.Tensor) -> torch.Tensor:
    p_NK, p_rest_N = logp_NK.exp(), logp_rest_N.exp()
    kl_N = (p_NK * (logp_NK - logq_NK)).sum(-1)
    rest_N = torch.where(p_rest_N > 0, p_rest_N * (logp_rest_N - logq_rest_N), torch.zeros_like(p_rest_N))
    return kl_N + rest_N


def forward_kl_ref(student_logits_NV: torch.Tensor, teacher_logp_NK: torch.Tensor, teacher_ids_NK: torch.Tensor,
                   teacher_rest_N: torch.Tensor) -> torch.Tensor:
    """kl_N (fp32 or the logits' dtype if wider): coarsened forward KL per row, plain autograd.

    teacher_ids_NK: int64 token ids; teacher_rest_N: log of the teacher mass outside them (-inf when none).
    """
    logits = student_logits_NV.to(torch.promote_types(student_logits_NV.dtype, torch.float32))
    logq_NV = torch.log_softmax(logits, dim=-1)
    logq_NK = logq_NV.gather(-1, teacher_ids_NK)
    logq_rest_N = logq_NV.scatter(-1, teacher_ids_NK, NEG_INF).logsumexp(-1)
    return _coarse_kl(logq_NK, logq_rest_N, teacher_logp_NK.to(logits.dtype), teacher_rest_N.to(logits.dtype))


class _FusedKL(torch.autograd.Function):
    """Per chunk of C rows: 1 matmul, ~6 elementwise passes over [C, V], 1 matmul for the gradient.

    e = exp(z - max z) with the top-K entries zeroed gives the rest mass exactly (no 1 - sum cancellation):
    s_rest = sum e, s = s_rest + sum_k exp(z_k - max z), q_j = e_j / s.
    """

    @staticmethod
    def forward(ctx, hidden_NM, weight_VM, teacher_logp_NK, teacher_ids_NK, teacher_rest_N, chunk, cols, col_weight):
        n = hidden_NM.shape[0]
        kl_N = torch.zeros(n, dtype=torch.float32, device=hidden_NM.device)
        argmax_N = torch.zeros(n, dtype=torch.long, device=hidden_NM.device)
        grad_NM = torch.zeros(n, hidden_NM.shape[1], dtype=torch.float32, device=hidden_NM.device)
        w_bf = (weight_VM if cols is None else weight_VM.index_select(0, cols)).to(torch.bfloat16)
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            ids_CK, logp_CK, logp_rest_C = teacher_ids_NK[a:b], teacher_logp_NK[a:b].float(), teacher_rest_N[a:b].float()
            z_CV = hidden_NM[a:b].detach().to(torch.bfloat16) @ w_bf.T  # bf16 logits (fp32 accumulation)
            zmax_C, argmax_N[a:b] = z_CV.max(-1)
            zmax_C = zmax_C.float()
            ztop_CK = z_CV.gather(-1, ids_CK).float() - zmax_C[:, None]
            e_CV = (z_CV - zmax_C[:, None]).exp_()  # fp32 (type promotion), in [0, 1]
            del z_CV
            if col_weight is not None:
                e_CV.mul_(col_weight)  # a sampled tail column stands for |tail| / m tokens (exact columns: 1)
            e_CV.scatter_(-1, ids_CK, 0.0)
            s_rest_C = e_CV.sum(-1)
            etop_CK = ztop_CK.exp()
            s_C = s_rest_C + etop_CK.sum(-1)
            logq_CK = ztop_CK - s_C.log()[:, None]
            logq_rest_C = s_rest_C.log() - s_C.log()
            kl_N[a:b] = _coarse_kl(logq_CK, logq_rest_C, logp_CK, logp_rest_C)
            # gradient w.r.t. the logits (module docstring), then through the lm_head
            p_CK, p_rest_C = logp_CK.exp(), logp_rest_C.exp()
            ratio_C = torch.where(p_rest_C > 0, p_rest_C / logq_rest_C.exp().clamp_min(1e-30), 0.0)
            total_C = p_CK.sum(-1) + p_rest_C
            g_CV = e_CV.mul_(((total_C - ratio_C) / s_C)[:, None])  # non-top entries; top entries are still 0
            g_CV.scatter_(-1, ids_CK, logq_CK.exp() * total_C[:, None] - p_CK)
            grad_NM[a:b] = (g_CV.to(torch.bfloat16) @ w_bf).float()
        if cols is not None:
            argmax_N = cols[argmax_N]  # the argmax among the computed columns, as a vocabulary id
        ctx.save_for_backward(grad_NM)
        ctx.hidden_dtype = hidden_NM.dtype
        ctx.mark_non_differentiable(argmax_N)
        return kl_N, argmax_N

    @staticmethod
    def backward(ctx, grad_kl_N, grad_argmax_N):
        (grad_NM,) = ctx.saved_tensors
        return (grad_NM * grad_kl_N[:, None]).to(ctx.hidden_dtype), None, None, None, None, None, None, None


@dataclasses.dataclass(frozen=True)
class SampledVocab:
    """Which logits a training step computes (module docstring): `exact_ids` always, the step's teacher ids always,
    `tail_samples` of the remaining tokens drawn uniformly."""

    exact_ids: torch.Tensor  # int64, distinct
    tail_samples: int
    vocab_size: int

    def __post_init__(self) -> None:
        if self.tail_samples <= 0:
            raise ValueError(f"--tail-samples {self.tail_samples}: must be positive (the rest mass is estimated "
                             f"from them); use --exact-vocab 0 for the full vocabulary")

    def columns(self, teacher_ids_NK: torch.Tensor, generator: torch.Generator | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cols int64 [C], col_weight fp32 [C], local teacher ids [N, K] indexing cols) for one step.

        vocab 6, exact {0}, teacher ids [[2]], 2 samples -> cols [0, 2, t1, t2] with t1, t2 drawn from the tail
        {1, 3, 4, 5}, weights [1, 1, 2, 2] (4 tail tokens / 2 samples), local teacher ids [[1]].
        """
        exact_V = torch.zeros(self.vocab_size, dtype=torch.bool)
        exact_V[self.exact_ids] = True
        exact_V[teacher_ids_NK.reshape(-1).cpu()] = True
        exact = exact_V.nonzero().squeeze(1)
        tail = (~exact_V).nonzero().squeeze(1)
        m = min(self.tail_samples, tail.numel())
        picked = tail[torch.randperm(tail.numel(), generator=generator)[:m]]
        cols = torch.cat([exact, picked])
        col_weight = torch.cat([torch.ones(exact.numel()), torch.full((m,), tail.numel() / max(m, 1))])
        lookup_V = torch.full((self.vocab_size,), -1, dtype=torch.long)
        lookup_V[cols] = torch.arange(cols.numel())
        device = teacher_ids_NK.device
        return cols.to(device), col_weight.to(device), lookup_V.to(device)[teacher_ids_NK]


def forward_kl_fused(hidden_NM: torch.Tensor, lm_head_weight_VM: torch.Tensor, teacher_logp_NK: torch.Tensor,
                     teacher_ids_NK: torch.Tensor, teacher_rest_N: torch.Tensor, chunk: int = 512,
                     vocab: SampledVocab | None = None,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(kl_N fp32, student_argmax_N int64) of student logits hidden_NM @ lm_head_weight_VM.T; differentiable in
    hidden_NM only (the lm_head is frozen). vocab None: the full vocabulary, same value as forward_kl_ref up to
    bf16 matmul rounding. vocab given: the sampled estimate (module docstring); argmax is over the computed columns,
    which always hold the teacher's top-K."""
    cols = col_weight = None
    if vocab is not None:
        cols, col_weight, teacher_ids_NK = vocab.columns(teacher_ids_NK, generator)
    return _FusedKL.apply(hidden_NM, lm_head_weight_VM.detach(), teacher_logp_NK, teacher_ids_NK, teacher_rest_N,
                          chunk, cols, col_weight)
