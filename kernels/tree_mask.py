"""Triton tree attention structures from parents: ancestor mask, positions and SGLang's retrieve links, one launch.

Twins: `jetspec_sglang.mask.build_ancestor_mask`, `tree_positions` and `build_retrieve_links` (jetspec-method.md
5.1, sglang-integration.md 9.3). Imports only torch and triton (kernels/ depends on nothing in the package).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

NO_LINK = -1  # == jetspec_sglang.mask.NO_LINK
MAX_NODES = 1024  # largest tree SGLang's tree helpers accept (draft_token_num <= 1024)
_NO_LINK = tl.constexpr(NO_LINK)  # kernels read module globals only as constexpr


@triton.jit
def _tree_mask_kernel(
    parents_ptr,  # [B, N] int64; NO_PARENT=-1 at root and padding, else in [0, N)
    depth_ptr,  # [B, N] int64 (read only when WRITE_POSITIONS)
    prefix_ptr,  # [B] int32/int64 prefix lengths S (read only when WRITE_POSITIONS)
    mask_ptr,  # out [B, N, N] bool; [b, i, j] = j is i or an ancestor of i
    positions_ptr,  # out [B, N] int64; S_b + depth
    retrieve_index_ptr,  # out [B, N] int64; b * N + i
    first_child_ptr,  # out [B, N] int64; smallest child index or NO_LINK
    next_sibling_ptr,  # out [B, N] int64; next larger index with the same parent or NO_LINK
    N,
    max_steps,  # ancestors farther than this are left out (the twin's pointer-jumping reach)
    WRITE_MASK: tl.constexpr,
    WRITE_POSITIONS: tl.constexpr,
    WRITE_LINKS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # One program owns BLOCK_R rows of one request and sweeps the columns in BLOCK_C tiles.
    b = tl.program_id(0).to(tl.int64)
    rows_R = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok_R = rows_R < N
    parents_row = parents_ptr + b * N
    parent_R = tl.load(parents_row + rows_R, mask=row_ok_R, other=-1).to(tl.int32)
    if WRITE_POSITIONS:
        depth_R = tl.load(depth_ptr + b * N + rows_R, mask=row_ok_R, other=0)
        prefix = tl.load(prefix_ptr + b).to(tl.int64)
        tl.store(positions_ptr + b * N + rows_R, prefix + depth_R, mask=row_ok_R)
    first_R = tl.full([BLOCK_R], N, tl.int32)
    next_R = tl.full([BLOCK_R], N, tl.int32)
    for c0 in range(0, N, BLOCK_C):
        cols_C = c0 + tl.arange(0, BLOCK_C)
        col_ok_C = cols_C < N
        if WRITE_MASK:
            # Walk up from every row at once; each step adds the ancestor one level higher.
            tile_RC = rows_R[:, None] == cols_C[None, :]
            anc_R = parent_R
            steps = 0
            while (steps < max_steps) & (tl.max(anc_R, 0) >= 0):
                tile_RC = tile_RC | (anc_R[:, None] == cols_C[None, :])
                anc_R = tl.load(parents_row + anc_R, mask=(anc_R >= 0) & (anc_R < N), other=-1).to(tl.int32)
                steps += 1
            out_RC = mask_ptr + b * N * N + rows_R[:, None].to(tl.int64) * N + cols_C[None, :]
            tl.store(out_RC, tile_RC, mask=row_ok_R[:, None] & col_ok_C[None, :])
        if WRITE_LINKS:
            parent_C = tl.load(parents_row + cols_C, mask=col_ok_C, other=-1).to(tl.int32)
            child_RC = (parent_C[None, :] == rows_R[:, None]) & col_ok_C[None, :]
            first_R = tl.minimum(first_R, tl.min(tl.where(child_RC, cols_C[None, :], N), 1))
            sibling_RC = ((parent_C[None, :] == parent_R[:, None]) & (cols_C[None, :] > rows_R[:, None])
                          & (parent_R[:, None] >= 0) & col_ok_C[None, :])
            next_R = tl.minimum(next_R, tl.min(tl.where(sibling_RC, cols_C[None, :], N), 1))
    if WRITE_LINKS:
        out_R = b * N + rows_R
        tl.store(retrieve_index_ptr + out_R, out_R, mask=row_ok_R)
        tl.store(first_child_ptr + out_R, tl.where(first_R == N, _NO_LINK, first_R).to(tl.int64), mask=row_ok_R)
        tl.store(next_sibling_ptr + out_R, tl.where(next_R == N, _NO_LINK, next_R).to(tl.int64), mask=row_ok_R)


def tree_mask(
    parents_BN: torch.Tensor,
    depth_BN: torch.Tensor | None = None,
    prefix_lens_B: torch.Tensor | None = None,
    max_depth: int | None = None,
    with_mask: bool = True,
    with_links: bool = True,
) -> tuple:
    """(mask_BNN bool, positions_BN int64, retrieve_index_BN, first_child_BN, next_sibling_BN int64) in one launch.

    mask_BNN[b, i, j] = j is i or an ancestor of i (padding sees only itself); positions = S_b + depth (only
    when depth_BN and prefix_lens_B are given); links as SGLang's retrieve_* (NO_LINK = -1). Parts not asked
    for are None. max_depth (default N - 1) bounds the ancestor reach exactly like the twin's pointer jumping:
    ancestors up to distance 2^ceil(log2(max_depth + 1)) - 1. parents [-1, 0, 0, 1] -> mask rows {0}, {0,1},
    {0,2}, {0,1,3}; first_child [1, 3, -1, -1]; next_sibling [-1, 2, -1, -1]; depth [0,1,1,2], S 7 ->
    positions [7, 8, 8, 9].
    """
    if parents_BN.dim() != 2:
        raise ValueError(f"parents_BN must be [B, N], got shape {tuple(parents_BN.shape)}")
    B, N = parents_BN.shape
    if not 1 <= N <= MAX_NODES:
        raise ValueError(f"N={N} tree nodes must be in [1, {MAX_NODES}]")
    with_positions = depth_BN is not None or prefix_lens_B is not None
    named = [("parents_BN", parents_BN, (B, N), (torch.int64,))]
    if with_positions:
        if depth_BN is None or prefix_lens_B is None:
            raise ValueError("positions need both depth_BN and prefix_lens_B (or neither)")
        named += [("depth_BN", depth_BN, (B, N), (torch.int64,)),
                  ("prefix_lens_B", prefix_lens_B, (B,), (torch.int32, torch.int64))]
    for name, t, shape, dtypes in named:
        if tuple(t.shape) != shape or t.dtype not in dtypes:
            raise ValueError(f"{name} is {t.dtype} {tuple(t.shape)}; expected {dtypes} {shape}")
        if t.device != parents_BN.device:
            raise ValueError(f"{name} is on {t.device}, parents_BN on {parents_BN.device}; use one device")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous())")
    depth = N - 1 if max_depth is None else max_depth
    if depth < 0:
        raise ValueError(f"max_depth={max_depth} must be >= 0")
    max_steps = 2 ** math.ceil(math.log2(depth + 1)) - 1 if depth > 0 else 0

    device = parents_BN.device
    empty = lambda *shape, dtype=torch.int64: torch.empty(*shape, dtype=dtype, device=device)  # noqa: E731
    mask_BNN = empty(B, N, N, dtype=torch.bool) if with_mask else None
    positions_BN = empty(B, N) if with_positions else None
    links = (empty(B, N), empty(B, N), empty(B, N)) if with_links else (None, None, None)
    if B > 0 and (with_mask or with_positions or with_links):
        BLOCK_C = min(triton.next_power_of_2(N), 256)
        BLOCK_R = min(triton.next_power_of_2(N), max(1, 2048 // BLOCK_C))  # 2048-entry tiles: < 100 registers
        unused = parents_BN  # placeholder pointer for outputs not asked for, never touched
        _tree_mask_kernel[(B, triton.cdiv(N, BLOCK_R))](
            parents_BN,
            depth_BN if with_positions else unused,
            prefix_lens_B if with_positions else unused,
            mask_BNN if with_mask else unused,
            positions_BN if with_positions else unused,
            *(t if with_links else unused for t in links),
            N, max_steps,
            WRITE_MASK=with_mask, WRITE_POSITIONS=with_positions, WRITE_LINKS=with_links,
            BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, num_warps=4,
        )
    return (mask_BNN, positions_BN, *links)
