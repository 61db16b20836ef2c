"""Torch stand-ins for the CUDA-only kernels behind `eagle_sample`'s sampled (non-greedy) branch, used on CPU.

SGLang 0.5.23 has no CPU build of `tree_speculative_sampling_target_only` (JIT CUDA), `top_k_renorm_prob` or
`top_p_renorm_prob` (FlashInfer), and `_verify_uses_greedy` therefore forces greedy verification on CPU: a
temperature-0.7 request would silently be decoded greedily. `install()` (called by the JETSPEC worker on CPU)
binds these torch implementations into `eagle_utils` and lets the sampled branch run. They reproduce the
distribution of SGLang's CPU sampler (layers/sampler.py top_k_top_p_min_p_sampling_from_probs_torch): top-k
masks ranks >= k, top-p keeps a token when the mass ranked before it is <= p (over the top-k-masked weights,
which equals the original cumulative mass), and the tree kernel normalises each row before using it.
Ledger: patches/README.md.
"""
from __future__ import annotations

import torch


def top_k_renorm_prob(probs_TV: torch.Tensor, top_ks_T: torch.Tensor) -> torch.Tensor:
    """Zero every token ranked >= k (k <= 0 or >= V: no cut). Left unnormalised on purpose (see module doc)."""
    V = probs_TV.shape[-1]
    k_T = torch.where((top_ks_T <= 0) | (top_ks_T >= V), V, top_ks_T).to(torch.int64).view(-1)
    sorted_p, order = probs_TV.sort(dim=-1, descending=True)
    sorted_p = sorted_p.masked_fill(torch.arange(V) >= k_T[:, None], 0.0)
    return torch.zeros_like(probs_TV).scatter_(-1, order, sorted_p)


def top_p_renorm_prob(probs_TV: torch.Tensor, top_ps_T: torch.Tensor) -> torch.Tensor:
    """Keep a token when the weight ranked strictly before it is <= p (SGLang's CPU sampler rule)."""
    sorted_p, order = probs_TV.sort(dim=-1, descending=True)
    before = torch.cumsum(sorted_p, -1) - sorted_p
    sorted_p = sorted_p.masked_fill(before > top_ps_T.view(-1, 1).to(sorted_p.dtype), 0.0)
    return torch.zeros_like(probs_TV).scatter_(-1, order, sorted_p)


def expect_cuda_layout(name: str, tensor: torch.Tensor, shape: tuple, dtype: torch.dtype) -> None:
    """Refuse what the CUDA kernel's TensorMatcher refuses (a non-contiguous view, another shape or dtype), so a
    caller bug that a GPU would reject - or, for strided views, misread - fails on CPU too."""
    if not tensor.is_contiguous():
        raise ValueError(f"tree_speculative_sampling_target_only (CPU twin): {name} is not contiguous (stride "
                         f"{tensor.stride()}); the CUDA kernel requires contiguous inputs - pass {name}.contiguous()")
    if tuple(tensor.shape) != tuple(int(d) for d in shape) or tensor.dtype != dtype:
        raise ValueError(f"tree_speculative_sampling_target_only (CPU twin): {name} is {tuple(tensor.shape)} "
                         f"{tensor.dtype}; the CUDA kernel expects {tuple(int(d) for d in shape)} {dtype}")


def tree_speculative_sampling_target_only(predicts, accept_index, accept_token_num, candidates, retrive_index,
                                          retrive_next_token, retrive_next_sibling, uniform_samples,
                                          uniform_samples_for_final_sampling, target_probs, draft_probs,
                                          threshold_single=1.0, threshold_acc=1.0, deterministic=True) -> None:
    """Torch twin of SGLang's TreeSpeculativeSamplingTargetOnly (kernels/jit/.../speculative/sampling.cuh).

    At the current node with coin u: walk its children in link order accumulating their target mass; accept the
    first child whose cumulative mass exceeds u (probability = its target probability); if none, sample the
    bonus from the target with the tried children removed. For deterministic, distinct children this emits
    every token with its exact target probability (jetspec-method.md 6.3). Rows are normalised first.
    """
    bs, n = candidates.shape
    steps = accept_index.shape[1]
    V = target_probs.shape[-1]
    for name, t, shape, dtype in (  # the CUDA op's TensorMatchers (jit/csrc/speculative/sampling.cuh)
            ("candidates", candidates, (bs, n), torch.int64), ("retrive_index", retrive_index, (bs, n), torch.int64),
            ("retrive_next_token", retrive_next_token, (bs, n), torch.int64),
            ("retrive_next_sibling", retrive_next_sibling, (bs, n), torch.int64),
            ("accept_index", accept_index, (bs, steps), torch.int32),
            ("accept_token_num", accept_token_num, (bs,), torch.int32), ("predicts", predicts, (bs * n,), torch.int32),
            ("uniform_samples", uniform_samples, (bs, n), torch.float32),
            ("uniform_samples_for_final_sampling", uniform_samples_for_final_sampling, (bs,), torch.float32),
            ("target_probs", target_probs, (bs, n, V), torch.float32),
            ("draft_probs", draft_probs, (bs, n, V), torch.float32)):
        expect_cuda_layout(name, t, shape, dtype)
    probs_BNV = target_probs.reshape(bs, n, -1).float()
    probs_BNV = probs_BNV / probs_BNV.sum(-1, keepdim=True).clamp(min=1e-30)
    cand, index = candidates.tolist(), retrive_index.tolist()
    next_token, next_sibling = retrive_next_token.tolist(), retrive_next_sibling.tolist()
    coins = uniform_samples.reshape(bs, n).tolist()
    for b in range(bs):
        node, coin, last, accepted, prob_acc = 0, coins[b][0], index[b][0], 0, 0.0
        accept_index[b, 0] = last
        tried = []
        for _ in range(1, steps):
            cur = next_token[b][node]
            while cur != -1:
                p = float(probs_BNV[b, node, cand[b][cur]])
                prob_acc += p
                if p > 0 and (coin < prob_acc / threshold_acc or p >= threshold_single):
                    predicts[last] = cand[b][cur]
                    accepted += 1
                    last = index[b][cur]
                    accept_index[b, accepted] = last
                    node, coin, prob_acc, tried = cur, coins[b][cur], 0.0, []
                    break
                tried.append(cand[b][cur])
                cur = next_sibling[b][cur]
            if cur == -1:
                break
        accept_token_num[b] = accepted
        residual_V = probs_BNV[b, node].clone()
        if tried:
            residual_V[torch.tensor(tried)] = 0.0
        u = float(uniform_samples_for_final_sampling.view(-1)[b]) * float(residual_V.sum())
        cdf_V = torch.cumsum(residual_V, 0)
        hits = torch.nonzero(cdf_V > u)
        if hits.numel():
            token = int(hits[0])
        else:  # u at the very top of the mass: the last token with mass, as the CUDA kernel does
            valid = torch.nonzero(residual_V > 0)
            token = int(valid[-1]) if valid.numel() else residual_V.shape[0] - 1
        predicts[last] = token


def install() -> None:
    """Bind the stand-ins into eagle_utils and stop it from forcing greedy verification on CPU."""
    import sglang.srt.speculative.eagle_utils as eagle_utils

    if getattr(eagle_utils, "_jetspec_cpu_sampling", False):
        return
    original = eagle_utils._verify_uses_greedy

    def verify_uses_greedy(*, is_all_greedy, is_cpu, is_hip, is_xpu, use_rejection_sampling):
        return original(is_all_greedy=is_all_greedy, is_cpu=False, is_hip=is_hip, is_xpu=is_xpu,
                        use_rejection_sampling=use_rejection_sampling)

    eagle_utils._verify_uses_greedy = verify_uses_greedy
    eagle_utils.tree_speculative_sampling_target_only = tree_speculative_sampling_target_only
    eagle_utils.top_k_renorm_prob = top_k_renorm_prob
    eagle_utils.top_p_renorm_prob = top_p_renorm_prob
    eagle_utils._jetspec_cpu_sampling = True
