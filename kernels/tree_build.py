"""Triton tree construction: the best-first heap of `accum_logp` / top2gap, one program per request.

Twin: `jetspec_sglang.tree.build_tree_ref` (exact heap; `build_tree` is its batched torch form), jetspec-method.md
4.2 and 4.4. Imports only torch and triton (kernels/ depends on nothing in the package).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

NO_PARENT = -1  # == jetspec_sglang.tree.NO_PARENT
LOGPROB_FLOOR = -1e30  # == jetspec_sglang.tree.LOGPROB_FLOOR
MAX_NODES = 1024  # largest budget SGLang's tree helpers accept (draft_token_num <= 1024)
_NO_PARENT = tl.constexpr(NO_PARENT)  # kernels read module globals only as constexpr
_LOGPROB_FLOOR = tl.constexpr(LOGPROB_FLOOR)


@triton.jit
def _tree_build_kernel(
    topk_tokens_ptr,  # [B, L, K] int32/int64; per-depth top-K tokens, rank order
    topk_logprobs_ptr,  # [B, L, K] float16/bfloat16/float32/float64; their log-probs
    root_tokens_ptr,  # [B] int32/int64; anchor token of each request
    caps_ptr,  # [B, L] int32/int64; fan-out cap per depth (read only when HAS_CAPS)
    tokens_ptr,  # out [B, N] int64; padding repeats the root token
    parents_ptr,  # out [B, N] int64; NO_PARENT at root and padding
    depth_ptr,  # out [B, N] int64; 0 at root and padding
    num_nodes_ptr,  # out [B] int64
    cum_ptr,  # out [B, N] float32; 0 at root, -inf at padding
    N,  # budget: node slots per request
    L,  # draft depth
    K,  # width
    HAS_CAPS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # Node index == insertion counter, so the heap is a masked max over `open_N` (popped nodes and depth-L leaves
    # excluded: the heap pops and skips leaves, which changes nothing else). Ties -> lowest index, like the heap.
    b = tl.program_id(0).to(tl.int64)
    idx_N = tl.arange(0, BLOCK_N)
    root = tl.load(root_tokens_ptr + b).to(tl.int64)
    neg_inf_N = tl.full([BLOCK_N], float("-inf"), tl.float64)
    score_N = tl.where(idx_N == 0, 0.0, neg_inf_N)  # float64, summed in the reference's order
    depth_N = tl.zeros([BLOCK_N], tl.int32)
    parent_N = tl.full([BLOCK_N], _NO_PARENT, tl.int32)
    token_N = tl.zeros([BLOCK_N], tl.int64) + root
    open_N = idx_N == 0
    n = 1  # nodes so far
    best, i = tl.max(tl.where(open_N, score_N, neg_inf_N), 0, return_indices=True)
    while (n < N) & (best > float("-inf")):
        d = tl.sum(tl.where(idx_N == i, depth_N, 0), 0)
        open_N = open_N & (idx_N != i)
        if HAS_CAPS:
            cap = tl.load(caps_ptr + b * L + d)
            cap = tl.minimum(tl.maximum(cap, 1), K).to(tl.int32)  # clamp before narrowing
        else:
            cap = K
        c = tl.minimum(cap, N - n)  # children appended now, best ranks first
        j_N = idx_N - n  # rank of the would-be child in slot idx
        new_N = (j_N >= 0) & (j_N < c)
        row = topk_logprobs_ptr + (b * L + d) * K
        lp_N = tl.load(row + j_N, mask=new_N, other=0.0).to(tl.float64)
        lp_N = tl.minimum(tl.maximum(lp_N, _LOGPROB_FLOOR), 0.0)  # == the twins: clamp to [FLOOR, 0]
        tok_N = tl.load(topk_tokens_ptr + (b * L + d) * K + j_N, mask=new_N, other=0).to(tl.int64)
        score_N = tl.where(new_N, best + lp_N, score_N)
        depth_N = tl.where(new_N, d + 1, depth_N)
        parent_N = tl.where(new_N, i, parent_N)
        token_N = tl.where(new_N, tok_N, token_N)
        open_N = open_N | (new_N & (d + 1 < L))
        n = n + c
        best, i = tl.max(tl.where(open_N, score_N, neg_inf_N), 0, return_indices=True)
    # Slots >= n still hold their initial padding values (root token, NO_PARENT, depth 0, -inf).
    out = b * N + idx_N
    keep = idx_N < N
    tl.store(tokens_ptr + out, token_N, mask=keep)
    tl.store(parents_ptr + out, parent_N.to(tl.int64), mask=keep)
    tl.store(depth_ptr + out, depth_N.to(tl.int64), mask=keep)
    tl.store(cum_ptr + out, score_N.to(tl.float32), mask=keep)
    tl.store(num_nodes_ptr + b, n)


def tree_build(
    topk_tokens_BLK: torch.Tensor,
    topk_logprobs_BLK: torch.Tensor,
    root_tokens_B: torch.Tensor,
    budget: int,
    fanout_caps_BL: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Trees of `build_tree_ref` for a batch in one launch, no host synchronisation.

    Returns (tokens_BN int64, parents_BN int64, depth_BN int64, num_nodes_B int64, cum_logprobs_BN float32), the
    fields of DraftTree. Scores are float64 sums (parent cum + log-prob floored at LOGPROB_FLOOR), so ties order
    exactly like the heap. fanout_caps_BL (top2gap) is clamped to [1, K]; None = K (accum_logp). Log-probs must
    not be NaN.
    """
    if topk_tokens_BLK.dim() != 3 or topk_tokens_BLK.shape != topk_logprobs_BLK.shape:
        raise ValueError(f"topk_tokens_BLK {tuple(topk_tokens_BLK.shape)} and topk_logprobs_BLK "
                         f"{tuple(topk_logprobs_BLK.shape)} must both be [B, L, K]")
    B, L, K = topk_tokens_BLK.shape
    if L < 1 or K < 1:
        raise ValueError(f"depth L={L} and width K={K} must be >= 1")
    if not isinstance(budget, int) or not 1 <= budget <= MAX_NODES:
        raise ValueError(f"budget={budget!r} must be an int in [1, {MAX_NODES}] (nodes per tree, root included)")
    if root_tokens_B.shape != (B,):
        raise ValueError(f"root_tokens_B must be [B={B}], got {tuple(root_tokens_B.shape)}")
    if fanout_caps_BL is not None and fanout_caps_BL.shape != (B, L):
        raise ValueError(f"fanout_caps_BL must be [B={B}, L={L}], got {tuple(fanout_caps_BL.shape)}")
    ints = (torch.int32, torch.int64)
    named = [("topk_tokens_BLK", topk_tokens_BLK, ints), ("root_tokens_B", root_tokens_B, ints),
             ("topk_logprobs_BLK", topk_logprobs_BLK,
              (torch.float16, torch.bfloat16, torch.float32, torch.float64))]
    if fanout_caps_BL is not None:
        named.append(("fanout_caps_BL", fanout_caps_BL, ints))
    for name, t, dtypes in named:
        if t.dtype not in dtypes:
            raise ValueError(f"{name} has dtype {t.dtype}; expected one of {dtypes}")
        if t.device != topk_tokens_BLK.device:
            raise ValueError(f"{name} is on {t.device}, topk_tokens_BLK on {topk_tokens_BLK.device}; use one device")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous())")
    device = topk_tokens_BLK.device
    N = budget
    tokens_BN = torch.empty(B, N, dtype=torch.int64, device=device)
    parents_BN = torch.empty(B, N, dtype=torch.int64, device=device)
    depth_BN = torch.empty(B, N, dtype=torch.int64, device=device)
    num_nodes_B = torch.empty(B, dtype=torch.int64, device=device)
    cum_BN = torch.empty(B, N, dtype=torch.float32, device=device)
    if B == 0:
        return tokens_BN, parents_BN, depth_BN, num_nodes_B, cum_BN
    BLOCK_N = triton.next_power_of_2(N)
    caps = fanout_caps_BL if fanout_caps_BL is not None else root_tokens_B  # placeholder pointer, never read
    # The loop is a chain of reductions over BLOCK_N: one warp per 256 slots keeps them in warp shuffles.
    _tree_build_kernel[(B,)](
        topk_tokens_BLK, topk_logprobs_BLK, root_tokens_B, caps,
        tokens_BN, parents_BN, depth_BN, num_nodes_B, cum_BN,
        N, L, K,
        HAS_CAPS=fanout_caps_BL is not None, BLOCK_N=BLOCK_N, num_warps=max(1, BLOCK_N // 256),
    )
    return tokens_BN, parents_BN, depth_BN, num_nodes_B, cum_BN
