"""Tree attention structures for the verify forward: ancestor mask, positions, SGLang's retrieve links, and the
flattened FULL custom mask SGLang's TARGET_VERIFY forward expects for a batch with different prefix lengths.

Pure torch. Follows jetspec-method.md 5.1 (mask, positions) and sglang-integration.md 9.1-9.3 (link and FULL mask
layouts). Node conventions (NO_PARENT at root and padding, parent < child) are tree.py's.
"""
from __future__ import annotations

import math

import torch

from jetspec_sglang.tree import NO_PARENT

NO_LINK = -1  # "no first child" / "no next sibling" in the retrieve links


def build_ancestor_mask(parents_BN: torch.Tensor, max_depth: int | None = None) -> torch.Tensor:
    """mask_BNN[b, i, j] = node j is an ancestor of node i or i itself (bool). Padding nodes see only themselves.

    Pointer jumping on whole rows: after t rounds every node sees its ancestors up to distance 2^t - 1, so
    ceil(log2(max_depth + 1)) rounds suffice (max_depth defaults to N - 1).
    parents [-1, 0, 0, 1] -> rows {0}, {0,1}, {0,2}, {0,1,3}.
    """
    B, N = parents_BN.shape
    device = parents_BN.device
    idx_N = torch.arange(N, device=device)
    # jump = parent (a root or padding node: itself), as a row of the flattened [B*N, N] mask
    jump_T = (torch.where(parents_BN == NO_PARENT, idx_N, parents_BN) + N * torch.arange(B, device=device)[:, None])
    jump_T = jump_T.reshape(B * N)
    mask_TN = torch.eye(N, dtype=torch.bool, device=device).repeat(B, 1)
    depth = N - 1 if max_depth is None else max_depth
    rounds = math.ceil(math.log2(depth + 1)) if depth > 0 else 0
    for r in range(rounds):
        mask_TN |= mask_TN.index_select(0, jump_T)  # row i |= row jump(i): whole-row copies, no [B, N, N] index
        if r + 1 < rounds:
            jump_T = jump_T.index_select(0, jump_T)
    return mask_TN.view(B, N, N)


def tree_positions(depth_BN: torch.Tensor, prefix_lens_B: torch.Tensor) -> torch.Tensor:
    """RoPE positions of tree nodes: prefix length + depth. depth [0,1,1,2], prefix 7 -> [7,8,8,9]."""
    return prefix_lens_B.to(torch.int64)[:, None] + depth_BN


def build_retrieve_links(parents_BN: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SGLang's tree links from parents: (retrieve_index_BN, first_child_BN, next_sibling_BN), all int64.

    retrieve_index = b*N + i (flat node id); first_child = smallest child index or NO_LINK; next_sibling = next
    larger index with the same parent or NO_LINK (never for the root or padding).
    parents [-1, 0, 0, 1] -> first_child [1, 3, -1, -1], next_sibling [-1, 2, -1, -1].
    (SGLang spells them retrive_index / retrive_next_token / retrive_next_sibling.)
    """
    B, N = parents_BN.shape
    device = parents_BN.device
    idx_N = torch.arange(N, device=device)
    # Sort the nodes by (parent, index): siblings become neighbours in index order. NO_PARENT nodes sort first.
    key_BN = parents_BN * N + idx_N
    order_BN = key_BN.argsort(dim=1)
    sorted_parent_BN = parents_BN.gather(1, order_BN)
    # In sorted order, the node after a child of p is its next sibling if it is a child of p too.
    same_BN = (sorted_parent_BN[:, 1:] == sorted_parent_BN[:, :-1]) & (sorted_parent_BN[:, 1:] != NO_PARENT)
    next_sibling_BN = torch.full((B, N), NO_LINK, dtype=torch.int64, device=device)
    next_sibling_BN.scatter_(1, order_BN[:, :-1], torch.where(same_BN, order_BN[:, 1:], NO_LINK))
    # first child of p = the smallest index whose parent is p (scatter-min; NO_PARENT nodes go to scratch slot N)
    first_child_BN = torch.full((B, N + 1), N, dtype=torch.int64, device=device)
    first_child_BN.scatter_reduce_(1, torch.where(parents_BN == NO_PARENT, N, parents_BN), idx_N.expand(B, N), "amin")
    first_child_BN = first_child_BN[:, :N]
    retrieve_index_BN = torch.arange(B, device=device)[:, None] * N + idx_N
    return retrieve_index_BN, first_child_BN.masked_fill(first_child_BN == N, NO_LINK), next_sibling_BN


def parents_from_links(first_child_BN: torch.Tensor, next_sibling_BN: torch.Tensor) -> torch.Tensor:
    """Inverse of `build_retrieve_links`: parents_BN from first-child / next-sibling links.

    A node's parent is found by stepping back along its sibling chain to the first child; pointer jumping over
    "previous sibling" links does it in log2(N) rounds. Unlinked nodes (root, padding) get NO_PARENT.
    """
    B, N = first_child_BN.shape
    device = first_child_BN.device
    idx_N = torch.arange(N, device=device).expand(B, N)
    src_fc = torch.where(first_child_BN >= 0, idx_N, N)
    src_ns = torch.where(next_sibling_BN >= 0, idx_N, N)
    parent_of_first = torch.full((B, N + 1), NO_PARENT, dtype=torch.int64, device=device)
    parent_of_first.scatter_(1, torch.where(first_child_BN >= 0, first_child_BN, N), src_fc)
    prev_sibling = torch.full((B, N + 1), NO_LINK, dtype=torch.int64, device=device)
    prev_sibling.scatter_(1, torch.where(next_sibling_BN >= 0, next_sibling_BN, N), src_ns)
    parent_of_first, prev_sibling = parent_of_first[:, :N], prev_sibling[:, :N]
    # Walk back to the first sibling: head[i] = first node of i's sibling chain.
    head_BN = idx_N.clone()
    step_BN = torch.where(prev_sibling >= 0, prev_sibling, idx_N)
    for _ in range(max(1, math.ceil(math.log2(N + 1)))):
        head_BN = step_BN.gather(1, head_BN)
        step_BN = step_BN.gather(1, step_BN)
    return parent_of_first.gather(1, head_BN)


def build_verify_mask_full(mask_BNN: torch.Tensor, prefix_lens_B: torch.Tensor, total: int | None = None) -> torch.Tensor:
    """SGLang's FULL custom mask: per request b, N rows x (S_b + N) columns, row-major, requests concatenated.

    Prefix columns are all True; tree columns are mask_BNN[b]. Request b starts at N * sum_{b'<b}(S_b' + N).
    `total` = N * sum(S_b + N) may be given to avoid a host read of the prefix lengths.
    N=2, S=[1, 0], mask rows [[1,0],[1,1]] -> [1,1,0, 1,1,1,  1,0, 1,1] (request 0 then request 1).
    """
    B, N, _ = mask_BNN.shape
    device = mask_BNN.device
    prefix_B = prefix_lens_B.to(device=device, dtype=torch.int64)
    row_len_B = prefix_B + N
    start_B = N * (torch.cumsum(row_len_B, 0) - row_len_B)
    if total is None:
        total = int(N * row_len_B.sum())
    flat = torch.ones(total, dtype=torch.bool, device=device)
    idx_N = torch.arange(N, device=device)
    pos_BNN = (start_B[:, None, None] + idx_N[None, :, None] * row_len_B[:, None, None]
               + prefix_B[:, None, None] + idx_N[None, None, :])
    flat[pos_BNN.reshape(-1)] = mask_BNN.reshape(-1)
    return flat
