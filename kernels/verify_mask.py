"""Triton FULL verify mask: SGLang's flattened custom mask for a batch whose requests have different prefix lengths.

Twin: `jetspec_sglang.mask.build_verify_mask_full` (sglang-integration.md 9.2, FULL_MASK layout). Imports only
torch and triton (kernels/ depends on nothing in the package).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_NODES = 1024  # largest tree SGLang's tree helpers accept (draft_token_num <= 1024)


@triton.jit
def _verify_mask_kernel(
    mask_ptr,  # [B, N, N] bool; ancestor mask of each request's tree
    prefix_ptr,  # [B] int32/int64; prefix lengths S_b
    out_ptr,  # out [total] bool; request b, row i starts at N * sum_{b'<b}(S_b' + N) + i * (S_b + N)
    B,
    N,
    total,  # flat length; the kernel never writes at or past it, and fills [needed, total) with True
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    # One program per (request, row): S_b prefix columns of True, then N tree columns copied from the mask.
    pid = tl.program_id(0)
    b = pid // N
    i = pid % N
    bb_B = tl.arange(0, BLOCK_B)
    row_len_B = tl.load(prefix_ptr + bb_B, mask=bb_B < B, other=0).to(tl.int64) + N
    start = N * tl.sum(tl.where(bb_B < b, row_len_B, 0), 0)  # exclusive prefix sum, no host read
    needed = N * tl.sum(tl.where(bb_B < B, row_len_B, 0), 0)
    S = tl.load(prefix_ptr + b).to(tl.int64)
    row_start = start + i * (S + N)
    s_S = tl.arange(0, BLOCK_S)
    ones_S = tl.full([BLOCK_S], 1, tl.int1)
    for s0 in range(0, S, BLOCK_S):
        at_S = row_start + s0 + s_S
        tl.store(out_ptr + at_S, ones_S, mask=(s0 + s_S < S) & (at_S < total))
    j_N = tl.arange(0, BLOCK_N)
    tree_N = tl.load(mask_ptr + (b * N + i).to(tl.int64) * N + j_N, mask=j_N < N, other=0)
    at_N = row_start + S + j_N
    tl.store(out_ptr + at_N, tree_N, mask=(j_N < N) & (at_N < total))
    # A `total` larger than needed (a buffer sized ahead) is padded with True, shared evenly by all programs.
    share = tl.cdiv(tl.maximum(total - needed, 0), B * N)
    t_start = needed + pid * share
    t_end = tl.minimum(t_start + share, total)
    for t0 in range(t_start, t_end, BLOCK_S):
        at_S = t0 + s_S
        tl.store(out_ptr + at_S, ones_S, mask=at_S < t_end)


def verify_mask(mask_BNN: torch.Tensor, prefix_lens_B: torch.Tensor, total: int | None = None) -> torch.Tensor:
    """SGLang's FULL custom mask, flat bool [total]: per request b, N rows x (S_b + N) columns, row-major.

    Prefix columns are True, tree columns are mask_BNN[b]; request b starts at N * sum_{b'<b}(S_b' + N).
    total = N * sum(S_b + N) is read from the host when None; pass it to avoid that synchronisation. A larger
    total is padded with True; a smaller one truncates (the twin raises instead).
    N=2, S=[1, 0], mask rows [[1,0],[1,1]] -> [1,1,0, 1,1,1,  1,0, 1,1].
    """
    if mask_BNN.dim() != 3 or mask_BNN.shape[1] != mask_BNN.shape[2]:
        raise ValueError(f"mask_BNN must be [B, N, N], got shape {tuple(mask_BNN.shape)}")
    B, N, _ = mask_BNN.shape
    if not 1 <= N <= MAX_NODES:
        raise ValueError(f"N={N} tree nodes must be in [1, {MAX_NODES}]")
    if mask_BNN.dtype != torch.bool:
        raise ValueError(f"mask_BNN has dtype {mask_BNN.dtype}; expected torch.bool")
    if prefix_lens_B.shape != (B,) or prefix_lens_B.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"prefix_lens_B is {prefix_lens_B.dtype} {tuple(prefix_lens_B.shape)}; expected int32/int64 "
                         f"({B},)")
    if prefix_lens_B.device != mask_BNN.device:
        raise ValueError(f"prefix_lens_B is on {prefix_lens_B.device}, mask_BNN on {mask_BNN.device}; use one device")
    for name, t in (("mask_BNN", mask_BNN), ("prefix_lens_B", prefix_lens_B)):
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous())")
    if total is None:
        total = int(N * (prefix_lens_B.sum() + B * N))  # host read
    if not isinstance(total, int) or total < 0:
        raise ValueError(f"total={total!r} must be an int >= 0 (N * sum(S_b + N))")
    out_T = torch.empty(total, dtype=torch.bool, device=mask_BNN.device)
    if B > 0 and total > 0:
        _verify_mask_kernel[(B * N,)](
            mask_BNN, prefix_lens_B, out_T, B, N, total,
            BLOCK_B=triton.next_power_of_2(B), BLOCK_N=triton.next_power_of_2(N), BLOCK_S=1024, num_warps=4,
        )
    return out_T
