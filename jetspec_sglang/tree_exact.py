"""The tie-exact batched tree builder: the same trees as `tree.build_tree_ref` when float64 scores tie.

`tree.build_tree` calls it only when its top-k fast path sees an exact tie (the top-k order of equal values is
unspecified). Same contract and output as `build_tree`; slower (sorts instead of top-k, L ranking rounds).
"""
from __future__ import annotations

import itertools

import torch

from jetspec_sglang.tree import LOGPROB_FLOOR, DraftTree, check_no_nan, check_tree_inputs, empty_tree
from jetspec_sglang.tree_batched import assemble_best_first, assemble_scatter


def build_tree_exact(
    topk_tokens_BLK: torch.Tensor,
    topk_logprobs_BLK: torch.Tensor,
    root_tokens_B: torch.Tensor,
    budget: int,
    fanout_caps_BL: torch.Tensor | None = None,
    best_first: bool = False,
) -> DraftTree:
    """`build_tree` with exact tie order (`best_first`: the node-granular trees, the first `budget` pops).

    The heap order is (score desc, parent's pop position asc, rank asc):
      1. per depth, a stable sort of the children of the previous depth's best E keeps (parent, rank) order;
      2. global ranks by iterating rank := dense rank of (score rank, parent's rank, rank); round t settles ties
         that need t ancestors, so L + 1 rounds settle all.
    """
    check_tree_inputs(topk_tokens_BLK, topk_logprobs_BLK, root_tokens_B, budget, fanout_caps_BL)
    B, L, K = topk_tokens_BLK.shape
    if budget == 1:
        return empty_tree(root_tokens_B, 1)
    if not (best_first and topk_logprobs_BLK.is_cuda):  # best_first on CUDA reads nothing back (NaN unchecked)
        check_no_nan(topk_logprobs_BLK)
    lp_BLK = topk_logprobs_BLK.double().clamp(LOGPROB_FLOOR, 0.0)
    device = lp_BLK.device
    if fanout_caps_BL is None:
        caps_BL, E = torch.full((B, L), K, dtype=torch.int64, device=device), -(-(budget - 1) // K)
    else:
        caps_BL, E = fanout_caps_BL.to(torch.int64).clamp(1, K), budget - 1
    if best_first:  # the first `budget` pops are the nodes themselves, so the lists run to depth L
        E = budget
    score_BG, valid_BG, j_BG, depth_BG, parent_BG, pop_order_BG = _pop_order(lp_BLK, caps_BL, E,
                                                                            L + 1 if best_first else L)
    G = score_BG.shape[1]
    Ee = min(E, G)
    exp_BE = pop_order_BG[:, :Ee]
    pos_BG = torch.empty_like(pop_order_BG).scatter_(1, pop_order_BG, torch.arange(G, device=device).expand(B, G))
    exp_parent_BE = parent_BG.gather(1, exp_BE)
    parent_pos_BE = torch.where(exp_parent_BE >= 0, pos_BG.gather(1, exp_parent_BE.clamp(min=0)), -1)
    picked = [t.gather(1, exp_BE) for t in (valid_BG, depth_BG, score_BG)]
    if best_first:
        return assemble_best_first(topk_tokens_BLK, root_tokens_B, budget, *picked, parent_pos_BE,
                                   j_BG.gather(1, exp_BE))
    return assemble_scatter(topk_tokens_BLK, lp_BLK, caps_BL, root_tokens_B, budget, *picked, parent_pos_BE,
                            j_BG.gather(1, exp_BE))


def _pop_order(lp_BLK: torch.Tensor, caps_BL: torch.Tensor, E: int, depths: int):
    """Heap pop order of the virtual tree's best nodes: per-depth lists of depths 0..depths-1 (E best each,
    children in (parent, rank) order), concatenated into G entries, and the global order by rank := dense rank of
    (score rank, parent's rank, rank), iterated until ancestors settle (L + 1 rounds).

    Returns score_BG float64, valid_BG bool, j_BG (rank), depth_BG, parent_BG (G index, -1 at the root) and
    pop_order_BG (G indices, valid entries first, in pop order). Nothing is read back to the host.
    """
    B, L, K = lp_BLK.shape
    device = lp_BLK.device
    rank_K = torch.arange(K, device=device)
    # 1. per-depth lists in the heap's within-depth order.
    scores = [lp_BLK.new_zeros(B, 1)]
    valid = [torch.ones(B, 1, dtype=torch.bool, device=device)]
    parent_local = [torch.full((B, 1), -1, dtype=torch.int64, device=device)]
    rank_j = [torch.zeros(B, 1, dtype=torch.int64, device=device)]
    for d in range(1, depths):
        P = scores[-1].shape[1]
        cand_BC = (scores[-1][:, :, None] + lp_BLK[:, d - 1, None, :]).reshape(B, P * K)
        ok_BC = (valid[-1][:, :, None] & (rank_K < caps_BL[:, d - 1, None, None])).reshape(B, P * K)
        idx_BE = _order_valid_score_desc(cand_BC, ok_BC)[:, : min(E, P * K)]
        scores.append(cand_BC.gather(1, idx_BE))
        valid.append(ok_BC.gather(1, idx_BE))
        parent_local.append(idx_BE // K)
        rank_j.append(idx_BE % K)
    # 2. global ranks over G = the lists concatenated.
    sizes = [s.shape[1] for s in scores]
    offsets = [0, *itertools.accumulate(sizes[:-1])]
    score_BG, valid_BG, j_BG = torch.cat(scores, 1), torch.cat(valid, 1), torch.cat(rank_j, 1)
    depth_BG = torch.cat([torch.full((B, n), d, dtype=torch.int64, device=device) for d, n in enumerate(sizes)], 1)
    parent_BG = torch.cat([parent_local[0]] + [p + offsets[d - 1] for d, p in enumerate(parent_local) if d > 0], 1)
    G = score_BG.shape[1]
    score_rank_BG = _dense_rank(_order_valid_score_desc(score_BG, valid_BG),
                                torch.stack([score_BG, valid_BG.double()], -1))
    rank_BG = score_rank_BG
    for _ in range(L + 1):
        parent_rank_BG = torch.where(parent_BG >= 0, rank_BG.gather(1, parent_BG.clamp(min=0)), -1)
        key_BG = (score_rank_BG * (G + 1) + parent_rank_BG + 1) * K + j_BG
        rank_BG = _dense_rank(torch.argsort(key_BG, dim=1, stable=True), key_BG[..., None])
    return score_BG, valid_BG, j_BG, depth_BG, parent_BG, torch.argsort(rank_BG, dim=1, stable=True)


def _order_valid_score_desc(score_BC: torch.Tensor, valid_BC: torch.Tensor) -> torch.Tensor:
    """Indices putting valid entries first, then score descending; ties keep index order (stable)."""
    by_score = torch.argsort(score_BC, dim=1, descending=True, stable=True)
    by_valid = torch.argsort((~valid_BC.gather(1, by_score)).to(torch.uint8), dim=1, stable=True)
    return by_score.gather(1, by_valid)


def _dense_rank(order_BC: torch.Tensor, key_BCF: torch.Tensor) -> torch.Tensor:
    """Dense rank (0, 1, ...) of each entry, given an order that sorts the rows by `key_BCF`; equal keys share."""
    B, C, F = key_BCF.shape
    sorted_key = key_BCF.gather(1, order_BC[:, :, None].expand(B, C, F))
    new_group = torch.zeros(B, C, dtype=torch.int64, device=order_BC.device)
    new_group[:, 1:] = (sorted_key[:, 1:] != sorted_key[:, :-1]).any(-1).to(torch.int64)
    return torch.empty_like(order_BC).scatter_(1, order_BC, torch.cumsum(new_group, 1))
