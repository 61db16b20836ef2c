"""The fast batched tree builders (top-k, no heap) and the scatter assembly shared with tree_exact.py.

Pure torch. Same contract as `tree.build_tree_ref`; see `build_tree_topk` for why it is exact. Two paths:
`_build_full` (accum_logp whenever the budget fills: static candidates, one top-k) and `_build_lists` (fan-out
caps or a virtual tree smaller than the budget: one top-k per depth).
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
    best_first: bool = False,
) -> DraftTree | None:
    """Build the reference trees with top-k instead of a heap; None when that could differ from the heap: rows not
    in rank order, NaN, or an exact score tie that the fast path cannot order (top-k orders equal values
    arbitrarily; `_resolve_ties` restores the heap's order in the accum_logp path, the lists path declines).

    Why it is exact: log-probs are clamped to <= 0 and rows are in rank order, so the heap pops the virtual
    cross-product tree in the total order (score desc, parent's pop position asc, rank asc), and node ids are
    insertion order: expansion e (the e-th popped node of depth < L) owns ids 1 + sum(caps of expansions < e) + j,
    j < cap. A node is popped after every node that dominates it (same or smaller rank at every depth of a prefix
    of it), so only nodes with few dominators can be among the E expansions (E = ceil((N-1)/K); N-1 with caps):
      1. score those candidates (static tables; `_build_lists`: per-depth lists pruned by top-k);
      2. the best E are the expansions, in pop order;
      3. lay each expansion's children into the N slots.
    """
    B, L, K = topk_tokens_BLK.shape
    N = budget
    if N == 1:
        return empty_tree(root_tokens_B, 1)
    if best_first:
        return _build_lists(topk_tokens_BLK, topk_logprobs_BLK, root_tokens_B, N, fanout_caps_BL, best_first=True)
    if fanout_caps_BL is None and _fills_budget(L, K, N):
        plan = _full_plan(-(-(N - 1) // K), K, L, topk_tokens_BLK.device)
        if plan is not None:  # None: too many candidates (large budget, small K); per-depth lists are cheaper
            return _build_full(topk_tokens_BLK, topk_logprobs_BLK, root_tokens_B, N, plan)
    return _build_lists(topk_tokens_BLK, topk_logprobs_BLK, root_tokens_B, N, fanout_caps_BL)


def _clamped_logprobs(topk_logprobs_BLK: torch.Tensor, zero_11: torch.Tensor):
    """Log-probs as [L, 1+K, B] float64, clamped to [LOGPROB_FLOOR, 0], with a leading 0 per row (one cat does
    layout, dtype and the 0: candidate-major rows make index_select copy whole rows), and a 0-d bool: rank order
    and no NaN, i.e. every row 0, lp_0, lp_1, ... is non-increasing."""
    B, L, K = topk_logprobs_BLK.shape
    lp_L1KB = torch.cat([zero_11[None].expand(L, 1, B), topk_logprobs_BLK.permute(1, 2, 0)], 1)
    lp_L1KB.clamp_(LOGPROB_FLOOR, 0.0)
    return lp_L1KB, (lp_L1KB[:, :-1] >= lp_L1KB[:, 1:]).all()


def _build_full(topk_tokens_BLK, topk_logprobs_BLK, root_tokens_B, N, plan) -> DraftTree | None:
    """No caps and a virtual tree of >= N nodes: every expansion has K children, nothing is missing.

    Candidates: the nodes with <= E dominators (`_full_plan`), scored depth by depth exactly like the heap sums
    them (parent's score + log-prob, float64), then one top-(E+1) over all of them.
    """
    B, L, K = topk_tokens_BLK.shape
    E = -(-(N - 1) // K)
    lp_L1KB, ordered = _clamped_logprobs(topk_logprobs_BLK, plan.zero_11)
    lp_CB = lp_L1KB.view(L * (K + 1), B).index_select(0, plan.lp_row_T).split(plan.sizes)
    scores = [plan.zero_11.expand(1, B)]  # the root
    for parent_C, lp_d in zip(plan.parent_slot, lp_CB):
        scores.append(scores[-1].index_select(0, parent_C) + lp_d)
    top_FB, g_FB = torch.topk(torch.cat(scores), plan.F, dim=0)  # F = E + TIE_SLACK: room for a tie at the cut
    tie_FB = top_FB[1:] == top_FB[:-1]
    if bool(tie_FB.any() | ordered.logical_not()):  # rare with float32 drafts, common with bf16 ones
        if not bool(ordered):
            return None
        g_FB = _resolve_ties(top_FB, g_FB, tie_FB, E, plan, L)
        if g_FB is None:
            return None
    exp_g_EB = g_FB[:E]
    parent_g_EB, rank_EB, exp_depth_EB, child_depth_EB = plan.cand_table_T4[exp_g_EB].unbind(-1)
    return _assemble_full(topk_tokens_BLK, lp_L1KB[:, 1:].permute(2, 0, 1), root_tokens_B, N, plan, exp_g_EB,
                          top_FB[:E].T, parent_g_EB, rank_EB, exp_depth_EB.T, child_depth_EB.T)


def _resolve_ties(top_FB, g_FB, tie_FB, E, plan, L):
    """The heap order of the top-F when scores tie (common with bf16 drafts: equal log-probs), else None.

    top-k orders equal scores arbitrarily; the heap pops them by insertion: (parent's pop position, rank). A
    parent scores >= its child, so it sits earlier in the top-F: re-sort by (score, parent's position, rank) until
    stable (a round settles one more level of ancestors). None if the run of equal scores at the cut may continue
    past the top-F (its members' parents, and the run itself, may be missing)."""
    F, B = top_FB.shape
    if F < plan.T and bool((top_FB[F - 1] == top_FB[E - 1]).any()):
        return None
    run_FB = torch.cat([plan.izero_11.expand(1, B), tie_FB.logical_not().long()]).cumsum(0)  # dense score rank
    arange_FB = plan.arange_F1.expand(F, B)
    for _ in range(L + 1):
        position_TB = torch.full((plan.T + 1, B), -1, dtype=torch.int64, device=g_FB.device)
        position_TB.scatter_(0, g_FB, arange_FB)  # row T (the root's parent) stays -1
        parent_g_FB, rank_FB = plan.cand_table_T4[g_FB, :2].unbind(-1)
        # (row last: unique keys even for the run at the end of the top-F, whose parents may be missing)
        key_FB = ((run_FB * (F + 1) + position_TB.gather(0, parent_g_FB) + 1) * (plan.K + 1) + rank_FB) * plan.T + g_FB
        order_FB = key_FB.argsort(dim=0)
        if bool((order_FB == arange_FB).all()):
            return g_FB
        g_FB = g_FB.gather(0, order_FB)
    return None  # not reached: L + 1 rounds settle every chain of ancestors


def _build_lists(topk_tokens_BLK, topk_logprobs_BLK, root_tokens_B, N, fanout_caps_BL,
                 best_first: bool = False) -> DraftTree | None:
    """Any caps, any virtual tree size: per depth a top-k keeps the best nodes of that depth (`_plan`), then the
    best E of all lists. Capped-off and missing nodes are -inf. best_first: the best N pops are the nodes
    themselves, so E = N and the lists run one depth further (to depth L)."""
    B, L, K = topk_tokens_BLK.shape
    device = topk_tokens_BLK.device
    if best_first:
        E = N
    else:
        E = -(-(N - 1) // K) if fanout_caps_BL is None else N - 1
    plan = _plan(E, K, L + 1 if best_first else L, device)
    lp_L1KB, ordered = _clamped_logprobs(topk_logprobs_BLK, plan.zero_11)
    # candidates of every depth [D*C, B]; padding (and capped-off) candidates are -inf (adds beat masked_fill)
    lp_TB = lp_L1KB.view(L * (K + 1), B).index_select(0, plan.lp_row_T).add_(plan.pad_bias_T1)
    if fanout_caps_BL is not None:  # out-of-range caps mean what the reference makes of them
        fanout_caps_BL = fanout_caps_BL.to(torch.int64).clamp(1, K)
        lp_TB.masked_fill_(plan.rank_T1 >= fanout_caps_BL.T.index_select(0, plan.depth_row_T), -math.inf)
    # 1. per-depth lists, best first, each with one boundary entry. Depth 1 is the (sorted) log-prob row 0 itself.
    values, picks = [plan.zero_11.expand(1, B)], [plan.izero_11.expand(1, B)]
    if plan.D:
        lp_CB = lp_TB.view(plan.D, plan.C, B).unbind(0)
        values.append(lp_CB[0][: plan.k[0]])
        picks.append(plan.picks1_K1.expand(-1, B))
    for d in range(1, plan.D):  # parent slots < size[d], so the boundary entry of values[-1] is never read
        v, i = torch.topk(values[-1].index_select(0, plan.parent_slot[d]) + lp_CB[d], plan.k[d], dim=0)
        values.append(v)
        picks.append(i)
    grid_XB, picks_XB = torch.cat(values), torch.cat(picks)  # X rows: root, then per depth its top-k
    # 2. expansions: the best E of all lists, in pop order (boundary entries get -inf).
    top_FB, exp_g_FB = torch.topk(grid_XB + plan.not_list_bias_X1, plan.F, dim=0)
    # Exact iff no top-k holds two adjacent equal finite values (the boundary entries catch ties at the cut).
    # Every top-k output, NaN rows between them (NaN equals nothing), then one comparison of neighbours.
    nan_1B = plan.nan_11.expand(1, B)
    rows_ZB = torch.cat([t for v in values[1:] + [top_FB] for t in (nan_1B, v)])
    tie_ZB = (rows_ZB[1:] == rows_ZB[:-1]) & (rows_ZB[1:] > -math.inf)
    if bool(tie_ZB.any() | ordered.logical_not()):
        return None
    Ee = min(E, plan.F)
    exp_g_EB, exp_score_BE = exp_g_FB[:Ee], top_FB[:Ee].T
    # candidate-table row of each expansion -> (grid row of its parent, its rank, its depth)
    cand_EB = (picks_XB + plan.cand_offset_X1).gather(0, exp_g_EB)
    parent_g_EB, rank_EB, exp_depth_EB = plan.cand_table_T3[cand_EB].unbind(-1)
    # 3. lay out the children (best_first: the pops themselves).
    pos_XB = torch.full((plan.X + 1, B), -1, dtype=torch.int64, device=device)  # the root's parent: X -> -1
    pos_XB.scatter_(0, exp_g_EB, plan.arange_E1[:Ee].expand(Ee, B))
    if best_first:
        return assemble_best_first(topk_tokens_BLK, root_tokens_B, N, torch.isfinite(exp_score_BE), exp_depth_EB.T,
                                   exp_score_BE, pos_XB.gather(0, parent_g_EB).T, rank_EB.T)
    caps_BL = fanout_caps_BL if fanout_caps_BL is not None else torch.full((B, L), K, device=device)
    return assemble_scatter(topk_tokens_BLK, lp_L1KB[:, 1:].permute(2, 0, 1), caps_BL, root_tokens_B, N,
                            torch.isfinite(exp_score_BE), exp_depth_EB.T, exp_score_BE, pos_XB.gather(0, parent_g_EB).T,
                            rank_EB.T)


def _assemble_full(topk_tokens_BLK, lp_BLK, root_tokens_B, N, plan, exp_g_EB, exp_score_BE, parent_g_EB, rank_EB,
                   exp_depth_BE, child_depth_BE) -> DraftTree:
    """Every expansion has K children and N - 1 <= E*K: expansion e's children are nodes 1 + e*K + j."""
    B, L, K = topk_tokens_BLK.shape
    E, M = exp_g_EB.shape[0], N - 1
    # first_child[g] = 1 + e*K for the e-th expansion; an expansion's own id = first_child[its parent] + rank.
    first_child_TB = torch.zeros(plan.T + 1, B, dtype=torch.int64, device=lp_BLK.device)  # row T: the root's parent
    first_child_TB.scatter_(0, exp_g_EB, plan.first_child_E1.expand(E, B))
    node_BE = (first_child_TB.gather(0, parent_g_EB) + rank_EB).T
    row_BEK = exp_depth_BE[:, :, None].expand(B, E, K)
    # tokens, parents and depth of the children as one [3, B, E*K] tensor, then the root column: [3, B, N]
    ints_3BEK = torch.stack([topk_tokens_BLK.gather(1, row_BEK).to(torch.int64), node_BE[:, :, None].expand(B, E, K),
                             child_depth_BE[:, :, None].expand(B, E, K)])
    root_3B1 = torch.cat([root_tokens_B.to(torch.int64)[None, :, None], plan.root_211.expand(2, B, 1)])
    tokens_BN, parents_BN, depth_BN = torch.cat([root_3B1, ints_3BEK.view(3, B, E * K)[:, :, :M]], 2)
    cum = (exp_score_BE[:, :, None] + lp_BLK.gather(1, row_BEK)).reshape(B, E * K)[:, :M]
    return DraftTree(
        tokens_BN=tokens_BN,
        parents_BN=parents_BN,
        depth_BN=depth_BN,
        num_nodes_B=torch.full((B,), N, dtype=torch.int64, device=lp_BLK.device),
        cum_logprobs_BN=torch.cat([plan.fzero_11.expand(B, 1), cum.float()], 1),
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


def assemble_best_first(topk_tokens_BLK, root_tokens_B, N, valid_BE, depth_BE, score_BE, parent_pos_BE,
                        rank_BE) -> DraftTree:
    """best_first layout: pop e (root first) is node e; its token is row depth-1, rank j of the top-k table.
    Pops past the valid ones (capped off or missing: fewer than N nodes exist) become padding."""
    B, L, K = topk_tokens_BLK.shape
    E = depth_BE.shape[1]
    row_BE = (depth_BE - 1).clamp(min=0) * K + rank_BE
    token_BE = topk_tokens_BLK.to(torch.int64).reshape(B, L * K).gather(1, row_BE)
    root_B1 = root_tokens_B.to(torch.int64)[:, None]
    tokens = torch.where(valid_BE & (depth_BE > 0), token_BE, root_B1)
    parents = torch.where(valid_BE, parent_pos_BE, NO_PARENT)
    depth = torch.where(valid_BE, depth_BE, 0)
    cum = torch.where(valid_BE, score_BE, -math.inf).float()
    if E < N:
        pad = N - E
        tokens = torch.cat([tokens, root_B1.expand(B, pad)], 1)
        parents = torch.cat([parents, parents.new_full((B, pad), NO_PARENT)], 1)
        depth = torch.cat([depth, depth.new_zeros(B, pad)], 1)
        cum = torch.cat([cum, cum.new_full((B, pad), -math.inf)], 1)
    return DraftTree(tokens, parents, depth, valid_BE.sum(1), cum)


def _fills_budget(L: int, K: int, N: int) -> bool:
    """Whether the virtual tree (K children per node down to depth L) has at least N nodes."""
    size, level = 1, 1
    for _ in range(L):
        if size >= N:
            break
        level *= K
        size += level
    return size >= N


@dataclass(frozen=True)
class _FullPlan:
    """Static tables of `_build_full` for one (E, K, L, device): T candidate rows (root first, then by depth)."""

    T: int
    F: int  # size of the top-k: E + TIE_SLACK (or T if smaller)
    sizes: list  # candidates per depth 1, 2, ...
    parent_slot: list  # per depth: [size] int64, parent's index among the previous depth's candidates
    lp_row_T: torch.Tensor  # [T-1] int64, row d*(K+1) + 1 + j of the [L*(K+1), B] log-probs (node of depth d+1)
    cand_table_T4: torch.Tensor  # [T, 4] int64 per candidate: parent row (root: T), rank, depth, depth + 1
    first_child_E1: torch.Tensor  # [E, 1] int64, 1 + e*K
    K: int
    arange_F1: torch.Tensor  # [F, 1] int64
    root_211: torch.Tensor  # [2, 1, 1] int64: the root's parent (NO_PARENT) and depth (0)
    zero_11: torch.Tensor  # [1, 1] float64
    izero_11: torch.Tensor  # [1, 1] int64
    fzero_11: torch.Tensor  # [1, 1] float32


_FULL_PLANS: dict = {}
TIE_SLACK = 8  # top-k entries past the E-th: a run of equal scores across the cut must end inside them
MAX_FULL_CANDIDATES = 8192  # above this one top-k over all candidates costs more than per-depth lists (CPU)


def _full_plan(E: int, K: int, L: int, device) -> _FullPlan | None:
    """Candidates = nodes of depth < L with at most E dominators, itself included: a node with ranks r_1..r_d
    has prod_{i<=k}(r_i + 1) dominators at each depth k <= d (the root counts 1), all popped before it, so a
    node with more than E cannot be among the first E pops (nor can its descendants). E=3, K=2, L=4 ->
    root (1), ranks (0) (1 + 1 = 2 <= 3), (1) (1 + 2 = 3), (0, 0) (1 + 1 + 1 = 3): T = 4, F = 4.
    None when there are more than MAX_FULL_CANDIDATES (K=7, L=15: N=128 -> 497, N=256 -> 3973, N=512 -> 27758).
    """
    key = (E, K, L, str(device))
    if key in _FULL_PLANS:
        return _FULL_PLANS[key]
    rows = [(NO_PARENT, 0, 0)]  # (parent row, rank, depth); the root's parent becomes the scratch row T
    frontier = [(0, 1, 1)]  # (row, prod of (rank + 1) so far, dominators so far)
    sizes, parent_slot = [], []
    for d in range(1, L):
        nxt, slots = [], []
        for slot, (row, prod, count) in enumerate(frontier):
            for j in range(K):
                if count + prod * (j + 1) > E:
                    break  # larger ranks have even more dominators
                rows.append((row, j, d))
                nxt.append((len(rows) - 1, prod * (j + 1), count + prod * (j + 1)))
                slots.append(slot)
            if len(rows) > MAX_FULL_CANDIDATES:
                _FULL_PLANS[key] = None
                return None
        if not nxt:
            break
        sizes.append(len(nxt))
        parent_slot.append(slots)
        frontier = nxt
    T = len(rows)
    F = min(E + TIE_SLACK, T)
    t = lambda x, dtype=torch.int64: torch.tensor(x, dtype=dtype, device=device)  # noqa: E731
    plan = _FullPlan(
        T=T,
        F=F,
        sizes=sizes,
        parent_slot=[t(slots) for slots in parent_slot],
        lp_row_T=t([(d - 1) * (K + 1) + 1 + j for _, j, d in rows[1:]]),
        cand_table_T4=t([(T if i == 0 else p, j, d, d + 1) for i, (p, j, d) in enumerate(rows)]),
        first_child_E1=t([1 + K * e for e in range(E)]).reshape(E, 1),
        K=K,
        arange_F1=t(list(range(F))).reshape(F, 1),
        root_211=t([[[NO_PARENT]], [[0]]]),
        zero_11=t([[0.0]], torch.float64),
        izero_11=t([[0]]),
        fzero_11=t([[0.0]], torch.float32),
    )
    _FULL_PLANS[key] = plan
    return plan


@dataclass(frozen=True)
class _Plan:
    """Static tables of `_build_lists` for one (E, K, L, device). Grid = the per-depth top-k's concatenated: X rows
    (root, then per depth its list and one boundary entry); row X is a scratch row (the root's "parent")."""

    D: int  # depth iterations: lists exist for depths 0..D
    C: int  # candidates per iteration (padded)
    X: int
    F: int  # size of the merge top-k: E + 1, or fewer when the lists hold fewer entries
    size: list  # list size per depth (size[0] = 1, the root)
    k: list  # top-k size per iteration (the list plus a boundary entry when there are more candidates)
    parent_slot: list  # per iteration: [C] int64, candidate's parent slot in the previous list (padding: 0)
    lp_row_T: torch.Tensor  # [D*C] int64, row d*(K+1) + 1 + j of the [L*(K+1), B] log-probs: candidate j, iter. d
    depth_row_T: torch.Tensor  # [D*C] int64, d: the log-prob (and cap) row of iteration d
    rank_T1: torch.Tensor  # [D*C, 1] int64, candidate's rank j
    pad_bias_T1: torch.Tensor  # [D*C, 1] float64, -inf for padding candidates, else 0
    picks1_K1: torch.Tensor  # [k[0], 1] int64, the static picks of depth 1: 0, 1, ...
    not_list_bias_X1: torch.Tensor  # [X, 1] float64, -inf for boundary entries, else 0
    cand_offset_X1: torch.Tensor  # [X, 1] int64, d*C for the rows of iteration d; root: D*C
    cand_table_T3: torch.Tensor  # [D*C+1, 3] int64 per candidate: parent grid row, rank, depth; last = the root
    arange_E1: torch.Tensor  # [E, 1] int64
    zero_11: torch.Tensor  # [1, 1] float64 (izero_11 int64, nan_11 float64)
    izero_11: torch.Tensor
    nan_11: torch.Tensor


_PLANS: dict = {}


def _plan(E: int, K: int, L: int, device) -> _Plan:
    """Candidates at depth d: (p, j) with p < size[d-1], j < K and (p+1)(j+1) <= E - d, in p*K + j order.

    The q-th best depth-d node has q same-depth nodes and d ancestors popped before it, so a depth-d list needs
    E - d entries; a candidate is preceded by the (p+1)(j+1) - 1 candidates it dominates (same or better
    parent and rank, earlier index), so others cannot make the list. E=3, K=2, L=4 -> depth 1: (0,0) (0,1);
    depth 2: (0,0); lists of sizes [1, 2, 1]; grid [root | (0,0) (0,1) | (0,0)], X = 4, F = 4.
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
    k = [min(size[d + 1] + 1, len(pairs)) for d, pairs in enumerate(cands)]
    list_start = [0] + [1 + sum(k[:d]) for d in range(D)]
    X = 1 + sum(k)
    table = []
    for d, pairs in enumerate(cands):
        table += [(list_start[d] + p, j, d + 1) for p, j in pairs] + [(X, 0, d + 1)] * (C - len(pairs))
    t = lambda x, dtype=torch.int64: torch.tensor(x, dtype=dtype, device=device)  # noqa: E731
    col = lambda x, dtype=torch.int64: t(x, dtype).reshape(-1, 1)  # noqa: E731
    plan = _Plan(
        D=D,
        C=C,
        X=X,
        F=min(E + 1, sum(size)),
        size=size,
        k=k,
        parent_slot=[t([p for p, _ in pairs] + [0] * (C - len(pairs))) for pairs in cands],
        lp_row_T=t([d * (K + 1) + 1 + row[1] for d in range(D) for row in table[d * C:(d + 1) * C]]),
        depth_row_T=t([d for d in range(D) for _ in range(C)]),
        rank_T1=col([row[1] for row in table]),
        pad_bias_T1=col([0.0 if r < len(pairs) else -math.inf for pairs in cands for r in range(C)], torch.float64),
        picks1_K1=col(list(range(k[0] if D else 0))),
        not_list_bias_X1=col([0.0] + [-math.inf if r >= size[d + 1] else 0.0 for d in range(D) for r in range(k[d])],
                             torch.float64),
        cand_offset_X1=col([D * C] + [d * C for d in range(D) for _ in range(k[d])]),
        cand_table_T3=t(table + [(X, 0, 0)]),
        arange_E1=col(list(range(E))),
        zero_11=t([[0.0]], torch.float64),
        izero_11=t([[0]]),
        nan_11=t([[math.nan]], torch.float64),
    )
    _PLANS[key] = plan
    return plan
