"""The draft's per-depth top-K: the target's LM head over the draft rows, projected in bf16 where that is faster.

The draft top-K only shapes the tree; acceptance compares draft tokens with the target's own verify logits
(verify.py: greedy walk and sample-and-match, neither reads draft probabilities), so projecting the draft rows
through a bf16 copy of an fp32 target's LM head is lossless: it can change which nodes the tree holds, never which
tokens are emitted. On this project's AVX-512 bf16 CPU the SmolLM2 [L, 576] x [576, 49152] product with its top-K
and normaliser took 7.0 vs 17.9 ms (L = 7) and 9.2 vs 31.9 ms (L = 15) in bf16 vs fp32.
A draft vocabulary subset (draft_vocab.py) keeps only its S rows of the weight: the product reads S / V of it and
the log-probs are normalised over the subset (also lossless, for the same reason).
Pure torch; the SGLang worker (glue/worker.py) owns one `DraftProjection` per server.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from jetspec_sglang.config import DRAFT_TOPK_DTYPES
from jetspec_sglang.packed_linear import pack_weight, packable_dtype, packed_linear

PROBE_REPEATS = 3


def topk_logprobs(hidden_TM: torch.Tensor, weight_VM: torch.Tensor, k: int,
                  work_2TV: tuple[torch.Tensor, torch.Tensor] | None = None,
                  packed_VM: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of log_softmax(hidden_TM @ weight_VM.T) per row: (logprobs_TK fp32, ids_TK int64), sorted descending.

    The softmax normaliser covers the whole vocabulary: exp in the projection dtype (no [T, V] fp32 copy), summed
    with fp32 accumulation (|error| of the log-probs ~1e-2 in bf16). `work_2TV`: two [T, V] tensors of the weight's
    dtype to compute in, reused across calls: on this project's CPU a fresh [T, V] tensor every round costs more in
    page faults (~4 ns per element) than the arithmetic on it. `packed_VM`: `weight_VM` packed by
    packed_linear.pack_weight; the product then runs through it (bit-identical logits, no per-call reorder;
    it has no out=, so work_2TV[0] is left unused).
    """
    if work_2TV is None:
        work_2TV = (None, None)
    if packed_VM is not None:
        logits_TV = packed_linear(hidden_TM.to(weight_VM.dtype), packed_VM)
    else:
        logits_TV = torch.matmul(hidden_TM.to(weight_VM.dtype), weight_VM.T, out=work_2TV[0])
    values_TK, ids_TK = torch.topk(logits_TV, k, dim=-1)  # sorted descending
    rowmax_T1 = values_TK[:, :1]
    sumexp_T1 = torch.sub(logits_TV, rowmax_T1, out=work_2TV[1]).exp_().sum(dim=-1, keepdim=True)
    return values_TK.float() - (rowmax_T1.float() + sumexp_T1.float().log()), ids_TK.long()


@dataclass(frozen=True)
class DraftProjection:
    """The LM-head weight the draft rows are projected through, and why it was chosen."""

    weight_VM: torch.Tensor  # [V, M] (or [S, M] rows of a subset); the target's weight, or its bf16 copy
    reason: str  # for the start-up log, e.g. "bfloat16 copy: 2.1 ms vs 9.0 ms (torch.float32) per [7 x 576] x [576 x 49152]"
    ids_S: torch.Tensor | None = None  # int64 [S]: the token id of each weight row (a subset), None: row = id
    packed_VM: torch.Tensor | None = None  # weight_VM packed for oneDNN (packed_linear.py), None: plain matmul
    _work: list = field(default_factory=list, compare=False, repr=False)  # topk_logprobs' two [rows, V] work tensors

    @classmethod
    def build(cls, weight_VM: torch.Tensor, mode: str, rows: int,
              ids_S: torch.Tensor | None = None, pack: bool = False) -> "DraftProjection":
        """`mode`: "model" keeps the target's weight; "bfloat16" uses a bf16 copy when the weight is wider;
        "auto" times both on `rows` draft rows (PROBE_REPEATS each, best taken) and keeps the faster.
        A bf16 weight is always kept as it is (no copy). `ids_S` (int64, distinct ids < V): draft from these tokens
        only (their rows are copied out first). `pack`: also pack the chosen weight for oneDNN where its dtype
        packs bit-exactly (packed_linear.py; CPU only)."""
        if mode not in DRAFT_TOPK_DTYPES:
            raise ValueError(f"draft top-K dtype {mode!r} is not one of {DRAFT_TOPK_DTYPES}; fix "
                             "JETSPEC_DRAFT_TOPK_DTYPE")
        if ids_S is not None:
            ids_S = ids_S.to(device=weight_VM.device, dtype=torch.int64)
            full = cls.build(weight_VM.index_select(0, ids_S), mode, rows, pack=pack)
            return cls(full.weight_VM, f"{full.reason}; {ids_S.numel()} of {weight_VM.shape[0]} vocabulary rows",
                       ids_S, full.packed_VM)
        if pack:
            plain = cls.build(weight_VM, mode, rows)
            if plain.weight_VM.device.type != "cpu" or not packable_dtype(plain.weight_VM.dtype):
                return plain
            return cls(plain.weight_VM, f"{plain.reason}, packed", None, pack_weight(plain.weight_VM))
        if mode == "model" or weight_VM.dtype in (torch.bfloat16, torch.float16):
            return cls(weight_VM, f"{weight_VM.dtype} (the target's LM head, mode {mode})")
        copy_VM = weight_VM.to(torch.bfloat16).contiguous()
        if mode == "bfloat16":
            return cls(copy_VM, f"bfloat16 copy of the {weight_VM.dtype} LM head (forced)")
        hidden_TM = torch.randn(rows, weight_VM.shape[1], dtype=weight_VM.dtype, device=weight_VM.device)
        own_ms, copy_ms = _best_ms(hidden_TM, weight_VM), _best_ms(hidden_TM, copy_VM)
        shape = f"[{rows} x {weight_VM.shape[1]}] x [{weight_VM.shape[1]} x {weight_VM.shape[0]}]"
        if copy_ms < own_ms:
            return cls(copy_VM, f"bfloat16 copy: {copy_ms:.1f} ms vs {own_ms:.1f} ms ({weight_VM.dtype}) per {shape}")
        return cls(weight_VM, f"{weight_VM.dtype}: {own_ms:.1f} ms vs {copy_ms:.1f} ms (bfloat16 copy) per {shape}")

    def __call__(self, hidden_TM: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logprobs_TK fp32, ids_TK int64 token ids), as `topk_logprobs` over the projection's rows."""
        T, V = hidden_TM.shape[0], self.weight_VM.shape[0]
        if not self._work or self._work[0].shape[0] < T:  # grown to the most rows seen; smaller calls use leading rows
            self._work[:] = [torch.empty(T, V, dtype=self.weight_VM.dtype, device=self.weight_VM.device)
                             for _ in range(2)]
        work_2TV = (self._work[0][:T], self._work[1][:T])
        logprobs_TK, rows_TK = topk_logprobs(hidden_TM, self.weight_VM, k, work_2TV, self.packed_VM)
        return logprobs_TK, (rows_TK if self.ids_S is None else self.ids_S[rows_TK])


def _best_ms(hidden_TM: torch.Tensor, weight_VM: torch.Tensor) -> float:
    torch.matmul(hidden_TM.to(weight_VM.dtype), weight_VM.T)  # first call: allocation and kernel selection
    best = float("inf")
    for _ in range(PROBE_REPEATS):
        start = time.perf_counter()
        torch.matmul(hidden_TM.to(weight_VM.dtype), weight_VM.T)
        best = min(best, time.perf_counter() - start)
    return best * 1e3
