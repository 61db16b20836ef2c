"""The fast batched tree builder (top-k per depth) and the scatter assembly shared with tree_exact.py.

Pure torch. Same contract as `tree.build_tree_ref`; see `build_tree_topk` for why it is exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from jetspec_sglang.tree import LOGPROB_FLOOR, NO_PARENT, DraftTree, empty_tree


def build_tree_topk(
    topk_tokens_BLK: torch.Tensor,
    topk_logprobs_BLK: torch.Tensor,
    root_tokens_B: torch.Tensor,
    budget: int,
    fanout_caps_BL: torch.Tensor | None = None,
) -> DraftTree | None:
    """Build the reference trees with one top-k per depth; None when an exact score tie makes top-k ambiguous.

    Why it is exact: log-probs are <= 0, so the heap pops the virtual cross-product tree in the total order
    (score desc, parent's pop position asc, rank asc), and node ids are insertion order: expansion e (the e-th
    popped node of depth < L) owns ids 1 + sum(caps of expansions < e) + j, j < cap. So:
      1. per depth d, the best nodes among the children of depth d-1's best ones (static candidate tables);
      2. the best E over all depths are the expansions, in pop order (E = ceil((N-1)/K); N-1 with caps);
      3. lay each expansion's children into the N slots.
    Without ties, top-k order is the heap order; ties (adjacent equal finite values) return None.
    """
    B, L, K = topk_tokens_BLK.shape
    N, device = budget, topk_tokens_BLK.device
    if N == 1:
        return empty_tree(root_tokens_B, 1)
    E = -(-(N - 1) // K) if fanout_caps_BL is None else N - 1
    plan = _plan(E, K, L, device)
    lp_BLK = topk_logprobs_BLK.double().clamp(min=LOGPROB_FLOOR)
    # Candidate log-probs of every depth at once: [D, B, C]; padding and capped-off ranks are -inf (no node).
    lp_DBC = lp_BLK.transpose(0, 1)[: plan.D].gather(2, plan.rank_DC[:, None, :].expand(plan.D, B, -1))
    drop_DBC = plan.pad_DC[:, None, :]
    if fanout_caps_BL is not None:
        drop_DBC = drop_DBC | (plan.rank_DC[:, None, :] >= fanout_caps_BL.T[: plan.D, :, None])
    lp_DBC = lp_DBC.masked_fill(drop_DBC, -math.inf)
    # 1. per-depth lists, best first.
    lists, seen, picks = [lp_BLK.new_zeros(B, 1)], [], []
    for d in range(plan.D):
        values, pick = torch.topk(lists[-1].index_select(1, plan.parent_slot[d]) + lp_DBC[d], plan.k[d], dim=1)
        seen.append(values)
        picks.append(pick)
        lists.append(values[:, : plan.size[d + 1]])
    # 2. expansions: the best E over all lists (grid index g = position in the concatenated lists).
    G = sum(plan.size)
    values, exp_g_BE = torch.topk(torch.cat(lists, 1), min(E + 1, G), dim=1)
    # Adjacent equal values inside one top-k row mean a tie; equal values across two rows (where the cat joins
    # them) can only cause a needless, still exact, slow rebuild.
    if bool(_has_tie(torch.cat(seen + [values], 1))):
        return None
    Ee = min(E, G)
    exp_g_BE, exp_score_BE = exp_g_BE[:, :Ee], values[:, :Ee]
    exp_depth_BE = plan.depth_G[exp_g_BE]
    if plan.D == 0:  # only the root can be expanded
        parent_pos_BE = torch.full_like(exp_g_BE, -1)
        rank_BE = torch.zeros_like(exp_g_BE)
    else:
        # candidate-table index of the grid slots 1..G-1 (the picks of each list, offset by d*C)
        cand_BX = torch.cat(picks, 1) + plan.pick_offset_X
        exp_cand_BE = cand_BX.gather(1, plan.grid_to_pick_G[exp_g_BE])
        pos_BG = torch.full((B, G), Ee, dtype=torch.int64, device=device)
        pos_BG.scatter_(1, exp_g_BE, plan.arange_E[:Ee].expand(B, Ee))
        parent_pos_BE = torch.where(exp_depth_BE > 0, pos_BG.gather(1, plan.parent_g_T[exp_cand_BE]), -1)
        rank_BE = plan.rank_T[exp_cand_BE]
    valid_BE = torch.isfinite(exp_score_BE)
    if fanout_caps_BL is not None:
        return assemble_scatter(topk_tokens_BLK, lp_BLK, fanout_caps_BL, root_tokens_B, N, valid_BE,
                                exp_depth_BE, exp_score_BE, parent_pos_BE, rank_BE)
    return _assemble_contiguous(topk_tokens_BLK, lp_BLK, root_tokens_B, N, valid_BE, exp_depth_BE, exp_score_BE,
                                parent_pos_BE, rank_BE)


def _assemble_contiguous(topk_tokens_BLK, lp_BLK, root_tokens_B, N, valid_BE, exp_depth_BE, exp_score_BE,
                         parent_pos_BE, rank_BE) -> DraftTree:
    """Every expansion has K children (no caps): expansion e's children are nodes 1 + e*K .. e*K + K."""
    B, L, K = topk_tokens_BLK.shape
    Ee = exp_depth_BE.shape[1]
    M = min(N - 1, Ee * K)
    node_BE = torch.where(parent_pos_BE >= 0, 1 + parent_pos_BE * K + rank_BE, 0)
    row_BEK = exp_depth_BE.clamp(max=L - 1)[:, :, None].expand(B, Ee, K)
    tokens = topk_tokens_BLK.to(torch.int64).gather(1, row_BEK).reshape(B, Ee * K)[:, :M]
    cum = (exp_score_BE[:, :, None] + lp_BLK.gather(1, row_BEK)).reshape(B, Ee * K)[:, :M]
    parents = node_BE.repeat_interleave(K, dim=1)[:, :M]
    depth = (exp_depth_BE + 1).repeat_interleave(K, dim=1)[:, :M]
    num_nodes_B = torch.clamp(1 + valid_BE.sum(1) * K, max=N)
    root_B1 = root_tokens_B.to(torch.int64)[:, None]
    pad = N - 1 - M  # > 0 only when the virtual tree is smaller than the budget
    zero_B1 = torch.zeros_like(root_B1)
    tokens_BN = torch.cat([root_B1, tokens] + [root_B1.expand(B, pad)] * (pad > 0), 1)
    parents_BN = torch.cat([zero_B1 - 1, parents] + [zero_B1.expand(B, pad)] * (pad > 0), 1)
    depth_BN = torch.cat([zero_B1, depth] + [zero_B1.expand(B, pad)] * (pad > 0), 1)
    cum_BN = torch.cat([zero_B1.double(), cum] + [zero_B1.double().expand(B, pad)] * (pad > 0), 1)
    pad_BN = torch.arange(N, device=tokens_BN.device) >= num_nodes_B[:, None]
    return DraftTree(
        tokens_BN=torch.where(pad_BN, root_B1, tokens_BN),
        parents_BN=parents_BN.masked_fill(pad_BN, NO_PARENT),
        depth_BN=depth_BN.masked_fill(pad_BN, 0),
        num_nodes_B=num_nodes_B,
        cum_logprobs_BN=cum_BN.masked_fill(pad_BN, -math.inf).float(),
    )


def assemble_scatter(topk_tokens_BLK, lp_BLK, caps_BL, root_tokens_B, N, valid_BE, exp_depth_BE, exp_score_BE,
                     parent_pos_BE, rank_BE) -> DraftTree:
    """General assembly (any caps): expansion e's children get ids first_child[e] + j, j < cap, scattered."""
    B, L, K = topk_tokens_BLK.shape
    E, device = exp_depth_BE.shape[1], lp_BLK.device
    d_BE = exp_depth_BE.clamp(max=L - 1)
    caps_BE = torch.where(valid_BE, caps_BL.to(torch.int64).clamp(1, K).gather(1, d_BE), 0)
    first_child_BE = 1 + torch.cumsum(caps_BE, 1) - caps_BE
    node_BE = torch.where(parent_pos_BE >= 0, first_child_BE.gather(1, parent_pos_BE.clamp(0, E - 1)) + rank_BE, 0)
    j_K = torch.arange(K, device=device)
    child_BEK = first_child_BE[:, :, None] + j_K
    slot_BEK = torch.where((j_K < caps_BE[:, :, None]) & (child_BEK < N), child_BEK, N)  # N = scratch slot
    tok_BEK = topk_tokens_BLK.to(torch.int64).gather(1, d_BE[:, :, None].expand(B, E, K))
    cum_BEK = exp_score_BE[:, :, None] + lp_BLK.gather(1, d_BE[:, :, None].expand(B, E, K))
    tree = empty_tree(root_tokens_B, N + 1)
    flat = slot_BEK.reshape(B, E * K)
    tokens = tree.tokens_BN.scatter(1, flat, tok_BEK.reshape(B, -1))
    parents = tree.parents_BN.scatter(1, flat, node_BE[:, :, None].expand(B, E, K).reshape(B, -1))
    depth = tree.depth_BN.scatter(1, flat, (exp_depth_BE + 1)[:, :, None].expand(B, E, K).reshape(B, -1))
    cum = tree.cum_logprobs_BN.double().scatter(1, flat, cum_BEK.reshape(B, -1))
    num_nodes_B = torch.clamp(1 + caps_BE.sum(1), max=N)
    return DraftTree(tokens[:, :N], parents[:, :N], depth[:, :N], num_nodes_B, cum[:, :N].float())


def _has_tie(values_BC: torch.Tensor) -> torch.Tensor:
    """Whether any row, sorted descending, holds two adjacent equal finite numbers (0-d bool tensor)."""
    return ((values_BC[:, 1:] == values_BC[:, :-1]) & (values_BC[:, 1:] > -math.inf)).any()


@dataclass(frozen=True)
class _Plan:
    """Static index tables for one (E, K, L, device); built once and cached."""

    D: int  # depth iterations: lists exist for depths 0..D
    size: list  # list size per depth (size[0] = 1, the root)
    k: list  # top-k size per iteration (one more than the list, for the tie check at its boundary)
    parent_slot: list  # per iteration: [C] int64, candidate's parent slot in the previous list
    rank_DC: torch.Tensor  # [D, C] int64, candidate's rank j (0 for padding)
    pad_DC: torch.Tensor  # [D, C] bool, padding candidates
    pick_offset_X: torch.Tensor  # [X] int64, d*C added to the picks of iteration d (X = sum of k)
    grid_to_pick_G: torch.Tensor  # [G] int64, column of a grid slot among the concatenated picks (root: 0)
    parent_g_T: torch.Tensor  # [D*C] int64, grid index of each candidate's parent
    rank_T: torch.Tensor  # [D*C] int64
    depth_G: torch.Tensor  # [G] int64, depth of each grid slot
    arange_E: torch.Tensor  # [E] int64


_PLANS: dict = {}


def _plan(E: int, K: int, L: int, device) -> _Plan:
    """Candidates at depth d: (p, j) with p < size[d-1], j < K and (p+1)(j+1) <= E - d, in p*K + j order.

    The q-th best depth-d node has q same-depth nodes and d ancestors popped before it, so a depth-d list needs
    E - d entries; a candidate is preceded by the (p+1)(j+1) - 1 candidates it dominates (same or better
    parent and rank, earlier index), so others cannot make the list. E=3, K=2, L=4 -> depth 1: (0,0) (0,1);
    depth 2: (0,0); lists of sizes [1, 2, 1].
    """
    key = (E, K, L, str(device))
    if key in _PLANS:
        return _PLANS[key]
    size, cands = [1], []
    for d in range(1, min(L, E)):
        pairs = [(p, j) for p in range(size[-1]) for j in range(K) if (p + 1) * (j + 1) <= E - d]
        if not pairs:
            break
        cands.append(pairs)
        size.append(min(E - d, len(pairs)))
    D = len(cands)
    C = max((len(c) for c in cands), default=1)
    starts = [sum(size[:d]) for d in range(len(size))]
    parent_slot, rank, pad, parent_g = [], [], [], []
    for d, pairs in enumerate(cands):
        fill = C - len(pairs)
        parent_slot.append(torch.tensor([p for p, _ in pairs] + [0] * fill, dtype=torch.int64, device=device))
        rank.append([j for _, j in pairs] + [0] * fill)
        pad.append([False] * len(pairs) + [True] * fill)
        parent_g.extend([starts[d] + p for p, _ in pairs] + [0] * fill)
    t = lambda x: torch.tensor(x, dtype=torch.int64, device=device)  # noqa: E731
    plan = _Plan(
        D=D,
        size=size,
        k=[min(size[d + 1] + 1, C) for d in range(D)],
        parent_slot=parent_slot,
        rank_DC=t(rank).reshape(D, C),
        pad_DC=torch.tensor(pad, dtype=torch.bool, device=device).reshape(D, C),
        pick_offset_X=t([d * C for d in range(D) for _ in range(min(size[d + 1] + 1, C))]),
        grid_to_pick_G=t([0] + [sum(min(size[e + 1] + 1, C) for e in range(d)) + s for d in range(D)
                                for s in range(size[d + 1])]),
        parent_g_T=t(parent_g),
        rank_T=t(rank).reshape(-1),
        depth_G=t([d for d, n in enumerate(size) for _ in range(n)]),
        arange_E=torch.arange(E, device=device),
    )
    _PLANS[key] = plan
    return plan
