"""Draft trees: DraftTree, the exact heap reference (`build_tree_ref`) and the batched torch builder (`build_tree`).

Follows the official `accum_logp` builder (jetspec/tree/baselines/accum_logp.py; jetspec-method.md 4.2) and its
`top2gap` fan-out-capped variant (4.4), plus this project's `best_first` (node-granular: the tree is the `budget`
best nodes of the virtual tree, so no budget goes to the low siblings of an expanded node; docs/tree-builders.md).
Pure torch; imports only config-free helpers. Words (draft, budget, width, depth) are defined in verify.py.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import torch

NO_PARENT = -1  # parent of the root and of padding nodes
# Every builder clamps log-probs to [LOGPROB_FLOOR, 0]: impossible tokens (-inf) still order exactly, and rounding
# noise above 0 (e.g. val - lse from a fused top-k) cannot let a child outscore its parent. NaN raises ValueError.
LOGPROB_FLOOR = -1e30


@dataclass(frozen=True)
class DraftTree:
    """A batch of draft trees, N node slots per request (N = budget).

    Node order is insertion order: parents precede children and siblings are in rank order (consecutive for
    accum_logp/top2gap; best_first inserts nodes in pop order, so siblings may interleave with other nodes).
    Slots n >= num_nodes_B[b] are padding: detached (NO_PARENT, depth 0), never reachable from the root.
    """

    tokens_BN: torch.Tensor  # int64; node 0 = root = anchor token; padding repeats the root token
    parents_BN: torch.Tensor  # int64; NO_PARENT at the root and at padding; parent < child
    depth_BN: torch.Tensor  # int64; 0 at the root and at padding
    num_nodes_B: torch.Tensor  # int64; real nodes per request, root included (<= N)
    cum_logprobs_BN: torch.Tensor  # float32; draft log-prob of the path root->node; 0 at root, -inf at padding

    @property
    def budget(self) -> int:
        return self.tokens_BN.shape[1]


def draft_topk(draft_logits_BLV: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-depth top-`width` of the draft distributions, normalised over the FULL vocabulary.

    Returns (topk_tokens_BLK int64, topk_logprobs_BLK float32), each row in rank order (best first).
    """
    if draft_logits_BLV.dim() != 3:
        raise ValueError(f"draft_logits_BLV must be [B, L, V], got shape {tuple(draft_logits_BLV.shape)}")
    logprobs_BLV = torch.log_softmax(draft_logits_BLV.float(), dim=-1)
    values_BLK, tokens_BLK = torch.topk(logprobs_BLV, width, dim=-1)
    return tokens_BLK, values_BLK


def top2gap_fanout_caps(topk_logprobs_BLK: torch.Tensor, width: int, beta: float, gap0: float) -> torch.Tensor:
    """Per-depth fan-out caps of top2gap: cap_d = max(1, round(K * sigmoid(-beta * (gap_d - gap0)))).

    gap_d = logprob(rank 1) - logprob(rank 2) of depth row d; K < 2 gives a chain (every cap 1).
    Rounds half to even, like Python's round(). Returns caps_BL int64 in [1, K]; cap_d applies to the
    children of a node at depth d, i.e. to row d of the top-k tables.
    """
    B, L, K = topk_logprobs_BLK.shape
    if width < 2 or K < 2:
        return torch.ones(B, L, dtype=torch.int64, device=topk_logprobs_BLK.device)
    # Clamped like the builders: an -inf rank-2 log-prob would make the gap inf or NaN and beta=0 * inf NaN.
    lp_BLK = topk_logprobs_BLK.double().clamp(LOGPROB_FLOOR, 0.0)
    gap_BL = lp_BLK[..., 0] - lp_BLK[..., 1]
    # beta = 0 means half of K everywhere, also for gap0 = +-inf (where 0 * inf would be NaN).
    logit_BL = torch.zeros_like(gap_BL) if beta == 0 else -beta * (gap_BL - gap0)
    caps_BL = torch.round(width * torch.sigmoid(logit_BL))
    return caps_BL.clamp(1, min(width, K)).to(torch.int64)


def build_tree_ref(
    topk_tokens_LK: torch.Tensor,
    topk_logprobs_LK: torch.Tensor,
    root_token: int,
    budget: int,
    fanout_caps_L: torch.Tensor | None = None,
    best_first: bool = False,
) -> DraftTree:
    """One request, the official heap exactly (`best_first`: the node-granular heap); a DraftTree with B = 1.

    Pop the highest cumulative log-prob (ties: earliest insertion); a node at depth L is popped and skipped;
    otherwise append its min(cap_d, K, budget - n) best children at once, in rank order.
    Worked example (L=2, K=2, budget 6; depth-1 a:-0.1 b:-2.4; depth-2 c:-0.5 e:-1.0):
    tokens [root, a, b, c, e, c], parents [-1, 0, 0, 1, 1, 2], depths [0, 1, 1, 2, 2, 2].
    """
    L, K = topk_tokens_LK.shape
    top_tok = topk_tokens_LK.tolist()
    check_no_nan(topk_logprobs_LK)
    top_lp = topk_logprobs_LK.double().clamp(LOGPROB_FLOOR, 0.0).tolist()  # host float64, like the official builder
    caps = [K] * L if fanout_caps_L is None else [max(1, min(int(c), K)) for c in fanout_caps_L.tolist()]
    heap = best_first_heap if best_first else accum_heap
    return _single_tree(*heap(top_tok, top_lp, caps, int(root_token), budget), int(root_token), budget,
                        topk_tokens_LK.device)


def accum_heap(top_tok: list, top_lp: list, caps: list, root_token: int, budget: int) -> tuple[list, ...]:
    """The accum_logp heap over host lists ([L][K] tokens and clamped float64 log-probs, [L] caps): the node lists
    (tokens, parents, depths, cums) of `build_tree_ref`, unpadded."""
    L = len(top_lp)
    tokens, parents, depths, cums = [root_token], [NO_PARENT], [0], [0.0]
    heap = [(-0.0, 0, 0)]  # (negated score, insertion counter, node index)
    counter = 0
    while heap and len(tokens) < budget:
        neg, _, i = heapq.heappop(heap)
        d = depths[i]
        if d >= L:
            continue
        for j in range(min(caps[d], budget - len(tokens))):
            c = -neg + top_lp[d][j]
            tokens.append(int(top_tok[d][j]))
            parents.append(i)
            depths.append(d + 1)
            cums.append(c)
            counter += 1
            heapq.heappush(heap, (-c, counter, len(tokens) - 1))
    return tokens, parents, depths, cums


def best_first_heap(top_tok: list, top_lp: list, caps: list, root_token: int, budget: int) -> tuple[list, ...]:
    """The node-granular heap: a node joins the tree when it is popped, not when its parent is expanded.

    The heap holds candidates; popping one appends it (its id = pop position) and pushes its min(cap_d, K)
    children (depth < L). Ties pop in push order, i.e. (parent's pop position, rank), the order of accum_logp's
    heap. So the tree is the `budget` best nodes of the virtual tree (scores fall along every path). Worked
    example (L=2, K=2, budget 4; depth-1 a:-0.1 b:-2.4; depth-2 c:-0.5 e:-1.0): pops root, a (-0.1), c under a
    (-0.6), e under a (-1.1): tokens [root, a, c, e], parents [-1, 0, 1, 1] (accum_logp: [root, a, b, c]).
    """
    L = len(top_lp)
    tokens, parents, depths, cums = [], [], [], []
    heap = [(-0.0, 0, root_token, NO_PARENT, 0)]  # (negated score, push counter, token, parent id, depth)
    counter = 0
    while heap and len(tokens) < budget:
        neg, _, token, parent, d = heapq.heappop(heap)
        tokens.append(token)
        parents.append(parent)
        depths.append(d)
        cums.append(-neg)
        if d >= L:
            continue
        for j in range(caps[d]):
            counter += 1
            heapq.heappush(heap, (neg - top_lp[d][j], counter, int(top_tok[d][j]), len(tokens) - 1, d + 1))
    return tokens, parents, depths, cums


def _single_tree(tokens, parents, depths, cums, root_token: int, budget: int, device) -> DraftTree:
    """A B = 1 DraftTree from node lists, padded to `budget` slots."""
    n = len(tokens)
    pad = budget - n
    return DraftTree(
        tokens_BN=torch.tensor([tokens + [root_token] * pad], dtype=torch.int64, device=device),
        parents_BN=torch.tensor([parents + [NO_PARENT] * pad], dtype=torch.int64, device=device),
        depth_BN=torch.tensor([depths + [0] * pad], dtype=torch.int64, device=device),
        num_nodes_B=torch.tensor([n], dtype=torch.int64, device=device),
        cum_logprobs_BN=torch.tensor([cums + [-math.inf] * pad], dtype=torch.float32, device=device),
    )


def build_tree_batch_ref(
    topk_tokens_BLK: torch.Tensor,
    topk_logprobs_BLK: torch.Tensor,
    root_tokens_B: torch.Tensor,
    budget: int,
    fanout_caps_BL: torch.Tensor | None = None,
    best_first: bool = False,
) -> DraftTree:
    """`build_tree_ref` looped over the batch: the slow twin of `build_tree`."""
    trees = [
        build_tree_ref(
            topk_tokens_BLK[b], topk_logprobs_BLK[b], int(root_tokens_B[b]), budget,
            None if fanout_caps_BL is None else fanout_caps_BL[b], best_first,
        )
        for b in range(topk_tokens_BLK.shape[0])
    ]
    return DraftTree(*(torch.cat([getattr(t, f) for t in trees]) for f in DraftTree.__dataclass_fields__))


def check_no_nan(topk_logprobs: torch.Tensor) -> None:
    """NaN log-probs (a broken draft) have no heap order: raise (one host read)."""
    if bool(torch.isnan(topk_logprobs).any()):
        raise ValueError("topk_logprobs_BLK holds NaN; the draft head produced NaN logits (check its weights and "
                         "inputs); trees need finite or -inf log-probs")


def check_tree_inputs(topk_tokens_BLK, topk_logprobs_BLK, root_tokens_B, budget, fanout_caps_BL=None) -> None:
    """Shape/dtype checks shared by every builder (no host synchronisation)."""
    if topk_tokens_BLK.dim() != 3 or topk_tokens_BLK.shape != topk_logprobs_BLK.shape:
        raise ValueError(
            f"topk_tokens_BLK {tuple(topk_tokens_BLK.shape)} and topk_logprobs_BLK {tuple(topk_logprobs_BLK.shape)} "
            "must both be [B, L, K]"
        )
    B, L, K = topk_tokens_BLK.shape
    if L < 1 or K < 1:
        raise ValueError(f"depth L={L} and width K={K} must be >= 1")
    if root_tokens_B.shape != (B,):
        raise ValueError(f"root_tokens_B must be [B={B}], got {tuple(root_tokens_B.shape)}")
    if topk_tokens_BLK.dtype not in (torch.int32, torch.int64) or not topk_logprobs_BLK.is_floating_point():
        raise ValueError(
            f"topk_tokens_BLK must be int32/int64 (got {topk_tokens_BLK.dtype}) and topk_logprobs_BLK floating "
            f"(got {topk_logprobs_BLK.dtype})"
        )
    if not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget={budget!r} must be an int >= 1 (nodes per tree, root included)")
    if fanout_caps_BL is not None and fanout_caps_BL.shape != (B, L):
        raise ValueError(f"fanout_caps_BL must be [B={B}, L={L}], got {tuple(fanout_caps_BL.shape)}")


def build_tree(
    topk_tokens_BLK: torch.Tensor,
    topk_logprobs_BLK: torch.Tensor,
    root_tokens_B: torch.Tensor,
    budget: int,
    fanout_caps_BL: torch.Tensor | None = None,
    best_first: bool = False,
) -> DraftTree:
    """The trees of `build_tree_ref` for a whole batch, in vectorised torch (loops over depth, never over nodes).

    topk_tokens_BLK int32/int64 and topk_logprobs_BLK float (rank order, e.g. from `draft_topk`; clamped to
    [LOGPROB_FLOOR, 0]; NaN raises ValueError); root_tokens_B int64; budget N = nodes per tree including the root;
    fanout_caps_BL int64 in [1, K] (None = K everywhere, i.e. accum_logp; `top2gap_fanout_caps` for top2gap).
    The fast path (`tree_batched.build_tree_topk`) uses top-k, whose order of exactly equal scores is
    unspecified; when it cannot restore the heap's order of a tie (or rows are not in rank order) it hands the
    batch to `tree_exact.build_tree_exact` on CUDA (to the host heaps on CPU), which orders ties like the heap.
    Either way the result equals the reference. `best_first` builds the node-granular trees (`best_first_heap`);
    on CUDA tensors it goes straight to the exact path, which reads nothing back to the host (the fast path's tie
    check would, every step; a parent and its child tie whenever a draft log-prob rounds to 0, so ties cannot be
    left to top-k). On CPU, small batches, and any batch the fast path declines, run the heaps themselves on host
    lists (`tree_host.build_tree_host`: fewer ops than the fast path, and ties cost nothing;
    docs/tree-builders.md).
    """
    from jetspec_sglang.tree_batched import build_tree_topk
    from jetspec_sglang.tree_host import build_tree_host, use_host_builder

    check_tree_inputs(topk_tokens_BLK, topk_logprobs_BLK, root_tokens_B, budget, fanout_caps_BL)
    args = (topk_tokens_BLK, topk_logprobs_BLK, root_tokens_B, budget, fanout_caps_BL, best_first)
    if use_host_builder(topk_logprobs_BLK, budget):
        return build_tree_host(*args)
    tree = None
    if not (best_first and topk_logprobs_BLK.is_cuda):
        tree = build_tree_topk(*args)
    if tree is None and not topk_logprobs_BLK.is_cuda:  # a tie (every step with a bf16 draft), unsorted rows, NaN
        return build_tree_host(*args)
    if tree is None:  # on CUDA: an unresolved exact tie or unsorted rows
        from jetspec_sglang.tree_exact import build_tree_exact

        tree = build_tree_exact(*args)
    return tree


def empty_tree(root_tokens_B: torch.Tensor, N: int) -> DraftTree:
    """Root-only trees: node 0 is the root; slots 1..N-1 are padding."""
    B, device = root_tokens_B.shape[0], root_tokens_B.device
    cum = torch.full((B, N), -math.inf, dtype=torch.float32, device=device)
    cum[:, 0] = 0.0
    return DraftTree(
        tokens_BN=root_tokens_B.to(torch.int64)[:, None].expand(B, N).clone(),
        parents_BN=torch.full((B, N), NO_PARENT, dtype=torch.int64, device=device),
        depth_BN=torch.zeros(B, N, dtype=torch.int64, device=device),
        num_nodes_B=torch.ones(B, dtype=torch.int64, device=device),
        cum_logprobs_BN=cum,
    )
