"""Tree builders against an independent heap oracle (jetspec-method.md 4.2 and 4.4).

Chain of trust: `heap_oracle` (below, transcribed from the doc's pseudo-code) == `build_tree_ref`; then every
batched builder (`build_tree` on both of its CPU routes, `tree_host.build_tree_host`, `tree_exact.build_tree_exact`,
`tree_batched.build_tree_topk` when it does not decline) == `build_tree_batch_ref`, all DraftTree fields exactly
(cum_logprobs bit for bit).
"""
import contextlib
import heapq
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tol

from jetspec_sglang.tree import (
    LOGPROB_FLOOR,
    NO_PARENT,
    DraftTree,
    build_tree,
    build_tree_batch_ref,
    build_tree_ref,
    draft_topk,
    empty_tree,
    top2gap_fanout_caps,
)
from jetspec_sglang import tree_host
from jetspec_sglang.tree_batched import _build_lists, build_tree_topk
from jetspec_sglang.tree_exact import build_tree_exact
from jetspec_sglang.tree_host import build_tree_host, use_host_builder

FIELDS = tuple(DraftTree.__dataclass_fields__)
TIE_VALUES = (0.0, -0.5, -1.0, -1.5)  # sums of these tie constantly, 0.0 makes parent and child tie
MODES = ("ties", "ties_inf", "bf16", "continuous", "draft", "unsorted", "above_zero")
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- oracle and helpers


@contextlib.contextmanager
def torch_route():
    """`build_tree` without its small-batch host route (tree_host.HOST_MAX_NODES = 0): the batched fast path runs
    even for the small batches the host builder would take (a batch it declines still comes back to the host)."""
    saved = tree_host.HOST_MAX_NODES
    tree_host.HOST_MAX_NODES = 0
    try:
        yield
    finally:
        tree_host.HOST_MAX_NODES = saved


def heap_oracle(tok_LK: list, lp_LK: list, root: int, budget: int, caps_L: list | None = None):
    """The `accum_logp` heap of jetspec-method.md 4.2 on Python floats (one request), with the top2gap cap (4.4).

    The only addition to the doc is tree.py's documented clamp of log-probs to [LOGPROB_FLOOR, 0].
    Returns (tokens, parents, depths, cums) as Python lists, cums in float64.
    """
    L, K = len(tok_LK), len(tok_LK[0])
    top_lp = [[min(max(float(v), LOGPROB_FLOOR), 0.0) for v in row] for row in lp_LK]
    caps = [K] * L if caps_L is None else [max(1, min(int(c), K)) for c in caps_L]
    tokens, parent, depth, cum = [root], [-1], [0], [0.0]
    heap, counter = [(-0.0, 0, 0)], 0
    while heap and len(tokens) < budget:
        neg, _, i = heapq.heappop(heap)
        d = depth[i]
        if d >= L:
            continue
        for j in range(min(caps[d], K, budget - len(tokens))):
            c = -neg + top_lp[d][j]
            tokens.append(int(tok_LK[d][j]))
            parent.append(i)
            depth.append(d + 1)
            cum.append(c)
            counter += 1
            heapq.heappush(heap, (-c, counter, len(tokens) - 1))
    return tokens, parent, depth, cum


def assert_tree_equal(got: DraftTree, want: DraftTree, where: str = "") -> None:
    for field in FIELDS:
        a, b = getattr(got, field), getattr(want, field)
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where} {field}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        assert torch.equal(a, b), f"{where} {field} differs:\n got {a.tolist()}\nwant {b.tolist()}"


def make_logprobs(mode: str, B: int, L: int, K: int, gen: torch.Generator) -> torch.Tensor:
    """topk_logprobs_BLK float32, each row non-increasing (rank order) and <= 0, except the adversarial modes."""
    if mode in ("ties", "ties_inf"):
        values = torch.tensor(TIE_VALUES + ((-math.inf,) if mode == "ties_inf" else ()))
        lp = values[torch.randint(0, len(values), (B, L, K), generator=gen)]
    elif mode == "bf16":
        lp = -(torch.randn(B, L, K, generator=gen) * 2).abs().bfloat16().float()
    elif mode == "continuous":
        lp = -torch.rand(B, L, K, generator=gen, dtype=torch.float64).mul(6)
    elif mode == "unsorted":  # not in rank order: the reference takes the rows as given
        return -torch.rand(B, L, K, generator=gen).mul(4)
    elif mode == "above_zero":  # rounding noise above 0 (val - lse of a fused top-k): clamped to 0 by every builder
        lp = -torch.rand(B, L, K, generator=gen, dtype=torch.float64).mul(3)
        lp[..., 0] = torch.rand(B, L, generator=gen, dtype=torch.float64) * 1e-6 - 2e-7
    else:  # "draft": realistic top-k of a peaked draft distribution
        logits = torch.randn(B, L, 64, generator=gen) * float(torch.empty(1).uniform_(0.5, 8, generator=gen))
        return draft_topk(logits, K)[1]
    return lp.sort(-1, descending=True).values.float()


def make_inputs(B, L, K, mode, seed, int32=False):
    gen = torch.Generator().manual_seed(seed)
    V = max(2 * K, 16)
    tok = torch.rand(B, L, V, generator=gen).argsort(-1)[..., :K]  # distinct tokens per depth row
    lp = make_logprobs(mode, B, L, K, gen)
    root = torch.randint(0, V, (B,), generator=gen)
    return tok.to(torch.int32 if int32 else torch.int64), lp, root


def virtual_size(L: int, K: int) -> int:
    return sum(K**d for d in range(L + 1))


@st.composite
def cases(draw, max_B=3, max_L=20, max_K=8, max_N=300):
    B = draw(st.integers(1, max_B))
    L = draw(st.integers(1, max_L))
    K = draw(st.integers(1, max_K))
    N = draw(st.one_of(st.sampled_from([1, K + 1, 256]), st.integers(1, max_N)))
    mode = draw(st.sampled_from(MODES))
    seed = draw(st.integers(0, 2**31 - 1))
    int32 = draw(st.booleans())
    return (B, L, K, N, mode, seed, int32)


# ---------------------------------------------------------------- the reference against the oracle


@settings(max_examples=400, **SETTINGS)
@given(case=cases(max_B=1), capped=st.booleans())
def test_ref_equals_heap_oracle(case, capped):
    _, L, K, N, mode, seed, int32 = case
    tok, lp, root = make_inputs(1, L, K, mode, seed, int32)
    caps = torch.randint(1, K + 1, (L,), generator=torch.Generator().manual_seed(seed)) if capped else None
    tokens, parents, depth, cum = heap_oracle(tok[0].tolist(), lp[0].tolist(), int(root[0]), N,
                                              None if caps is None else caps.tolist())
    tree = build_tree_ref(tok[0], lp[0], int(root[0]), N, caps)
    n, pad = len(tokens), N - len(tokens)
    assert tree.num_nodes_B.tolist() == [n]
    assert tree.tokens_BN.tolist() == [tokens + [int(root[0])] * pad]
    assert tree.parents_BN.tolist() == [parents + [NO_PARENT] * pad]
    assert tree.depth_BN.tolist() == [depth + [0] * pad]
    assert torch.equal(tree.cum_logprobs_BN, torch.tensor([cum + [-math.inf] * pad], dtype=torch.float32))


def test_worked_example_of_method_doc():
    """jetspec-method.md 4.2: D=2, K=2, budget 6; depth-1 a:-0.1 b:-2.4; depth-2 c:-0.5 e:-1.0."""
    a, b, c, e, root = 11, 12, 13, 14, 99
    tok = torch.tensor([[[a, b], [c, e]]])
    lp = torch.tensor([[[-0.1, -2.4], [-0.5, -1.0]]])
    want_cum = torch.tensor([[0.0, -0.1, -2.4, -0.1 - 0.5, -0.1 - 1.0, -2.4 - 0.5]], dtype=torch.float64).float()
    for name, builder in [("batch_ref", build_tree_batch_ref), ("build_tree", build_tree),
                          ("exact", build_tree_exact), ("topk", build_tree_topk)]:
        tree = builder(tok, lp, torch.tensor([root]), 6)
        assert tree.tokens_BN.tolist() == [[root, a, b, c, e, c]], name
        assert tree.parents_BN.tolist() == [[-1, 0, 0, 1, 1, 2]], name
        assert tree.depth_BN.tolist() == [[0, 1, 1, 2, 2, 2]], name
        assert tree.num_nodes_B.tolist() == [6], name
        torch.testing.assert_close(tree.cum_logprobs_BN, want_cum, rtol=0, atol=0)
    assert heap_oracle(tok[0].tolist(), lp[0].tolist(), root, 6)[0] == [root, a, b, c, e, c]


# ---------------------------------------------------------------- batched builders against the reference


def _check_builders(tok, lp, root, N, caps=None, where=""):
    want = build_tree_batch_ref(tok, lp, root, N, caps)
    assert_tree_equal(build_tree(tok, lp, root, N, caps), want, f"build_tree {where}")
    with torch_route():
        assert_tree_equal(build_tree(tok, lp, root, N, caps), want, f"build_tree (torch route) {where}")
    assert_tree_equal(build_tree_host(tok, lp, root, N, caps), want, f"build_tree_host {where}")
    assert_tree_equal(build_tree_exact(tok, lp, root, N, caps), want, f"build_tree_exact {where}")
    fast = build_tree_topk(tok, lp, root, N, caps)
    if fast is not None:
        assert_tree_equal(fast, want, f"build_tree_topk {where}")
    if N > 1:  # the per-depth-lists path on its own (build_tree_topk sends it only caps and small virtual trees)
        lists = _build_lists(tok, lp, root, N, caps)
        if lists is not None:
            assert_tree_equal(lists, want, f"_build_lists {where}")
    return want, fast


@settings(max_examples=800, **SETTINGS)
@given(case=cases())
def test_batched_builders_equal_ref(case):
    B, L, K, N, mode, seed, int32 = case
    tok, lp, root = make_inputs(B, L, K, mode, seed, int32)
    _check_builders(tok, lp, root, N, where=str(case))


@settings(max_examples=300, **SETTINGS)
@given(case=cases(max_N=200), beta=st.sampled_from([0.0, 0.5, 2.0, 8.0]), gap0=st.sampled_from([0.0, 1.0, 3.0]))
def test_top2gap_builders_equal_ref(case, beta, gap0):
    B, L, K, N, mode, seed, int32 = case
    tok, lp, root = make_inputs(B, L, K, mode, seed, int32)
    caps = top2gap_fanout_caps(lp, K, beta, gap0)
    _check_builders(tok, lp, root, N, caps, where=f"{case} beta={beta} gap0={gap0}")


@settings(max_examples=200, **SETTINGS)
@given(case=cases(max_N=120), seed2=st.integers(0, 2**31 - 1))
def test_arbitrary_caps_equal_ref(case, seed2):
    """Caps outside [1, K] (0, negative, > K) are clamped to [1, K] by every builder, like the reference."""
    B, L, K, N, mode, seed, int32 = case
    tok, lp, root = make_inputs(B, L, K, mode, seed, int32)
    caps = torch.randint(-1, K + 3, (B, L), generator=torch.Generator().manual_seed(seed2))
    _check_builders(tok, lp, root, N, caps.to(torch.int32 if int32 else torch.int64), where=str(case))


@settings(max_examples=300, **SETTINGS)
@given(data=st.data(), L=st.integers(1, 4), K=st.integers(1, 4), N=st.integers(1, 60), capped=st.booleans())
def test_exact_ties_drawn_value_by_value(data, L, K, N, capped):
    """Log-probs drawn entry by entry from a tiny set (shrinks to the smallest tie that breaks a builder)."""
    B = data.draw(st.integers(1, 2))
    flat = data.draw(st.lists(st.sampled_from(TIE_VALUES), min_size=B * L * K, max_size=B * L * K))
    lp = torch.tensor(flat).reshape(B, L, K).sort(-1, descending=True).values
    tok = torch.arange(B * L * K).reshape(B, L, K) % (K + 1)
    caps = None
    if capped:
        caps = torch.tensor(data.draw(st.lists(st.integers(1, K), min_size=B * L, max_size=B * L))).reshape(B, L)
    want, _ = _check_builders(tok, lp, torch.arange(B) + 100, N, caps)
    for b in range(B):
        oracle = heap_oracle(tok[b].tolist(), lp[b].tolist(), 100 + b, N, None if caps is None else caps[b].tolist())
        assert want.parents_BN[b, : len(oracle[1])].tolist() == oracle[1]


@pytest.mark.parametrize("N", [16, 64, 128, 256])
def test_fast_path_taken_without_ties(N):
    """Tie-free realistic drafts (K=7, L=15) take the top-k path, so the tests above really exercise it."""
    gen = torch.Generator().manual_seed(N)
    tok, lp = draft_topk(torch.randn(4, 15, 1000, generator=gen).double() * 3, 7)
    lp = lp.double() + torch.rand(lp.shape, generator=gen, dtype=torch.float64) * 1e-7  # break float32 ties
    lp = lp.sort(-1, descending=True).values.clamp(max=0)
    fast = build_tree_topk(tok, lp, torch.arange(4), N)
    assert fast is not None
    assert_tree_equal(fast, build_tree_batch_ref(tok, lp, torch.arange(4), N))


def test_large_budget_small_width_uses_per_depth_lists():
    """K=2, L=20, N=256: too many static candidates (`_full_plan` is None); the per-depth lists build it exactly."""
    from jetspec_sglang.tree_batched import _full_plan

    assert _full_plan(-(-255 // 2), 2, 20, torch.device("cpu")) is None
    assert _full_plan(-(-127 // 7), 7, 15, torch.device("cpu")).T == 497
    tok, lp, root = make_inputs(2, 20, 2, "continuous", 11)
    fast = build_tree_topk(tok, lp, root, 256)
    assert fast is not None
    assert_tree_equal(fast, build_tree_batch_ref(tok, lp, root, 256))


@pytest.mark.parametrize("N", [64, 128, 256])
def test_bf16_drafts_tie_and_take_the_fast_path(N):
    """bf16 logits give equal log-probs (ties) in about half the rows; the fast path orders them like the heap."""
    gen = torch.Generator().manual_seed(N)
    logits = torch.randn(6, 15, 5000, generator=gen) * 2
    logits[..., :1] += torch.rand(6, 15, 1, generator=gen) * 12
    tok, lp = draft_topk(logits.bfloat16(), 7)
    assert (lp[..., 1:] == lp[..., :-1]).any(), "the inputs must hold ties"
    fast = build_tree_topk(tok, lp, torch.arange(6), N)
    assert fast is not None
    assert_tree_equal(fast, build_tree_batch_ref(tok, lp, torch.arange(6), N))


def test_topk_declines_on_ties_and_build_tree_stays_exact():
    """All-zero log-probs tie everywhere: the fast path must decline, the batch falls back for every request."""
    tok, lp, root = make_inputs(3, 6, 3, "continuous", 5)
    lp[1] = 0.0  # one tied request in an otherwise tie-free batch
    assert build_tree_topk(tok, lp, root, 40) is None
    with torch_route():
        assert_tree_equal(build_tree(tok, lp, root, 40), build_tree_batch_ref(tok, lp, root, 40))


# ---------------------------------------------------------------- structure


@settings(max_examples=200, **SETTINGS)
@given(case=cases(), capped=st.booleans())
def test_structural_invariants(case, capped):
    B, L, K, N, mode, seed, int32 = case
    tok, lp, root = make_inputs(B, L, K, mode, seed, int32)
    caps = top2gap_fanout_caps(lp, K, 2.0, 1.0) if capped else None
    tree = build_tree(tok, lp, root, N, caps)
    assert tree.budget == N
    for b in range(B):
        n = int(tree.num_nodes_B[b])
        tokens, parents = tree.tokens_BN[b].tolist(), tree.parents_BN[b].tolist()
        depth, cum = tree.depth_BN[b].tolist(), tree.cum_logprobs_BN[b]
        assert 1 <= n <= N
        if caps is None and virtual_size(L, K) >= N:
            assert n == N, "the budget is filled whenever the virtual tree is big enough"
        elif caps is None:
            assert n == virtual_size(L, K), "a small virtual tree is built whole"
        assert (tokens[0], parents[0], depth[0], float(cum[0])) == (int(root[b]), NO_PARENT, 0, 0.0)
        children = {}
        for i in range(1, n):
            p = parents[i]
            assert 0 <= p < i, "parent < child"
            assert depth[i] == depth[p] + 1 <= L
            assert cum[i] <= cum[p], "log-probs are clamped to <= 0"
            children.setdefault(p, []).append(i)
        for p, kids in children.items():
            assert kids == list(range(kids[0], kids[0] + len(kids))), "siblings are consecutive"
            assert len(kids) <= (K if caps is None else int(caps[b, depth[p]]))
            ranks = [tok[b, depth[p]].tolist().index(tokens[i]) for i in kids]
            assert ranks == list(range(len(kids))), "siblings are the first tokens of the row, in row order"
            assert len(set(tokens[i] for i in kids)) == len(kids), "siblings are distinct"
        for i in range(n, N):  # padding is detached
            assert (tokens[i], parents[i], depth[i], float(cum[i])) == (int(root[b]), NO_PARENT, 0, -math.inf)
        # nodes of different parents appear in parent pop order: first children ordered like their parents' cums
        firsts = sorted((kids[0], p) for p, kids in children.items())
        assert all(cum[a] >= cum[c] for (_, a), (_, c) in zip(firsts, firsts[1:])) or mode == "unsorted"


@pytest.mark.parametrize("L,K,N,expected", [(5, 1, 20, 6), (1, 3, 10, 4), (2, 2, 50, 7), (3, 1, 4, 4), (1, 1, 1, 1)])
def test_virtual_tree_smaller_than_budget(L, K, N, expected):
    tok, lp, root = make_inputs(2, L, K, "continuous", L * 100 + K)
    for builder in (build_tree, build_tree_exact, build_tree_batch_ref):
        tree = builder(tok, lp, root, N)
        assert tree.num_nodes_B.tolist() == [expected] * 2
        assert (tree.parents_BN[:, expected:] == NO_PARENT).all() and (tree.depth_BN[:, expected:] == 0).all()
    assert_tree_equal(build_tree(tok, lp, root, N), build_tree_batch_ref(tok, lp, root, N))


def test_budget_one_is_root_only():
    tok, lp, root = make_inputs(3, 4, 2, "continuous", 1)
    for builder in (build_tree, build_tree_exact, build_tree_topk, build_tree_batch_ref):
        assert_tree_equal(builder(tok, lp, root, 1), empty_tree(root, 1), builder.__name__)


def test_width_one_is_a_chain():
    tok, lp, root = make_inputs(2, 9, 1, "bf16", 3)
    tree = build_tree(tok, lp, root, 10)
    assert tree.parents_BN.tolist() == [list(range(-1, 9))] * 2
    assert torch.equal(tree.tokens_BN[:, 1:], tok[:, :, 0])
    torch.testing.assert_close(tree.cum_logprobs_BN[:, 1:], lp[:, :, 0].double().cumsum(1).float(), rtol=0, atol=0)


# ---------------------------------------------------------------- best_first (node-granular heap)


def best_first_oracle(tok_LK: list, lp_LK: list, root: int, budget: int):
    """Independent of the heap: enumerate the whole virtual tree, keep the `budget` best scores. Only for tie-free
    log-probs (then the order is the score order, parents first). Returns (tokens, parents, depths, cums)."""
    L, K = len(tok_LK), len(tok_LK[0])
    nodes = [((), 0.0)]  # (rank path, score)
    frontier = [((), 0.0)]
    for d in range(L):
        frontier = [(path + (j,), score + min(float(lp_LK[d][j]), 0.0)) for path, score in frontier for j in range(K)]
        nodes += frontier
    nodes.sort(key=lambda x: (-x[1], len(x[0])))  # a parent ties its child only at log-prob 0: parent first
    kept = nodes[:budget]
    index = {path: i for i, (path, _) in enumerate(kept)}
    tokens = [root] + [int(tok_LK[len(p) - 1][p[-1]]) for p, _ in kept[1:]]
    parents = [NO_PARENT] + [index[p[:-1]] for p, _ in kept[1:]]
    return tokens, parents, [len(p) for p, _ in kept], [s for _, s in kept]


@settings(max_examples=200, **SETTINGS)
@given(L=st.integers(1, 4), K=st.integers(1, 4), N=st.integers(1, 60), seed=st.integers(0, 2**31 - 1))
def test_best_first_is_the_top_budget_nodes_of_the_virtual_tree(L, K, N, seed):
    tok, lp, root = make_inputs(1, L, K, "continuous", seed)
    tokens, parents, depths, cums = best_first_oracle(tok[0].tolist(), lp[0].tolist(), int(root[0]), N)
    tree = build_tree_ref(tok[0], lp[0], int(root[0]), N, best_first=True)
    n = len(tokens)
    assert tree.num_nodes_B.tolist() == [n] and n == min(N, virtual_size(L, K))
    assert tree.tokens_BN[0, :n].tolist() == tokens and tree.parents_BN[0, :n].tolist() == parents
    assert tree.depth_BN[0, :n].tolist() == depths
    assert torch.equal(tree.cum_logprobs_BN[0, :n], torch.tensor(cums, dtype=torch.float32))


def test_best_first_worked_example():
    """tree.py's example: depth-1 a:-0.1 b:-2.4; depth-2 c:-0.5 e:-1.0. Budget 4: root, a, c (-0.6), e (-1.1);
    accum_logp spends a slot on b (-2.4) instead. Budget 6 adds b (-2.4), then c under b (-2.9)."""
    a, b, c, e, root = 11, 12, 13, 14, 99
    tok = torch.tensor([[[a, b], [c, e]]])
    lp = torch.tensor([[[-0.1, -2.4], [-0.5, -1.0]]])
    for builder in (build_tree_batch_ref, build_tree, build_tree_exact, build_tree_topk):
        tree = builder(tok, lp, torch.tensor([root]), 4, None, True)
        assert tree.tokens_BN.tolist() == [[root, a, c, e]] and tree.parents_BN.tolist() == [[-1, 0, 1, 1]]
        tree = builder(tok, lp, torch.tensor([root]), 6, None, True)
        assert tree.tokens_BN.tolist() == [[root, a, c, e, b, c]], builder.__name__
        assert tree.parents_BN.tolist() == [[-1, 0, 1, 1, 0, 4]] and tree.depth_BN.tolist() == [[0, 1, 2, 2, 1, 2]]
    assert build_tree(tok, lp, torch.tensor([root]), 4).tokens_BN.tolist() == [[root, a, b, c]]  # accum_logp


@settings(max_examples=500, **SETTINGS)
@given(case=cases(max_N=120), capped=st.booleans())
def test_best_first_batched_builders_equal_ref(case, capped):
    B, L, K, N, mode, seed, int32 = case
    tok, lp, root = make_inputs(B, L, K, mode, seed, int32)
    caps = top2gap_fanout_caps(lp, K, 2.0, 1.0) if capped else None
    want = build_tree_batch_ref(tok, lp, root, N, caps, best_first=True)
    assert_tree_equal(build_tree(tok, lp, root, N, caps, best_first=True), want, f"build_tree {case}")
    with torch_route():
        assert_tree_equal(build_tree(tok, lp, root, N, caps, best_first=True), want, f"build_tree (torch) {case}")
    assert_tree_equal(build_tree_host(tok, lp, root, N, caps, best_first=True), want, f"host {case}")
    assert_tree_equal(build_tree_exact(tok, lp, root, N, caps, best_first=True), want, f"exact {case}")
    fast = build_tree_topk(tok, lp, root, N, caps, best_first=True)
    if fast is not None:
        assert_tree_equal(fast, want, f"topk {case}")
    # structure: parents first, depth + 1, scores fall along paths, siblings distinct and in rank order
    for b in range(B):
        n = int(want.num_nodes_B[b])
        parents, depth, tokens = want.parents_BN[b].tolist(), want.depth_BN[b].tolist(), want.tokens_BN[b].tolist()
        kids = {}
        for i in range(1, n):
            assert 0 <= parents[i] < i and depth[i] == depth[parents[i]] + 1 <= L
            kids.setdefault(parents[i], []).append(i)
        for p, ids in kids.items():
            row = tok[b, depth[p]].tolist()
            ranks = [row.index(tokens[i]) for i in ids]
            assert len(set(ranks)) == len(ranks), "siblings are distinct"
            if mode != "unsorted":  # rows as given pop by score, not by rank
                assert ranks == list(range(len(ids))), "a node's children are the first ranks of its row, in order"


@settings(max_examples=200, **SETTINGS)
@given(case=cases(max_N=100))
def test_best_first_holds_at_least_the_draft_mass_of_accum_logp(case):
    """Under the draft's own model a node is reached with probability exp(cum); best_first maximises the sum over
    the tree (the `budget` best nodes), so it never holds less than accum_logp's tree of the same budget."""
    B, L, K, N, mode, seed, int32 = case
    if mode == "unsorted":
        return
    tok, lp, root = make_inputs(B, L, K, mode, seed, int32)
    best = build_tree(tok, lp, root, N, best_first=True).cum_logprobs_BN.double().exp().sum(1)
    accum = build_tree(tok, lp, root, N).cum_logprobs_BN.double().exp().sum(1)
    assert bool((best >= accum - 1e-9).all()), (best.tolist(), accum.tolist())


# ---------------------------------------------------------------- draft_topk, top2gap caps, input checks


def test_draft_topk_normalises_over_full_vocab():
    logits = torch.randn(2, 3, 500, generator=torch.Generator().manual_seed(0)) * 4
    tok, lp = draft_topk(logits.bfloat16(), 5)
    full = torch.log_softmax(logits.bfloat16().float(), -1)
    assert tok.dtype == torch.int64 and lp.dtype == torch.float32 and tok.shape == (2, 3, 5)
    torch.testing.assert_close(lp, full.gather(-1, tok), **tol(torch.float32))
    assert (lp[..., :-1] >= lp[..., 1:]).all() and (lp <= 0).all()
    assert torch.equal(tok, full.topk(5, -1).indices)
    with pytest.raises(ValueError, match="draft_logits_BLV"):
        draft_topk(logits[0], 5)


@settings(max_examples=200, **SETTINGS)
@given(K=st.integers(1, 9), beta=st.floats(0, 8), gap0=st.floats(-2, 4), seed=st.integers(0, 2**31 - 1))
def test_top2gap_caps_formula(K, beta, gap0, seed):
    lp = make_logprobs("continuous", 2, 5, max(K, 2), torch.Generator().manual_seed(seed))[..., :K]
    caps = top2gap_fanout_caps(lp, K, beta, gap0)
    assert caps.dtype == torch.int64 and caps.shape == (2, 5)
    for (b, d), cap in zip([(b, d) for b in range(2) for d in range(5)], caps.flatten().tolist()):
        if K < 2:
            assert cap == 1
            continue
        gap = float(lp[b, d, 0]) - float(lp[b, d, 1])
        x = K / (1 + math.exp(beta * (gap - gap0)))
        if abs(x - math.floor(x) - 0.5) < 1e-9:
            continue  # exactly half-way: rounding direction depends on the last ulp
        assert cap == max(1, min(K, round(x))), (gap, beta, gap0, K)


def test_top2gap_limits():
    tok, lp, root = make_inputs(2, 6, 4, "continuous", 9)
    assert (top2gap_fanout_caps(lp, 1, 2.0, 1.0) == 1).all()  # K < 2 gives a chain
    # beta > 0 and gap0 -> inf recovers accum_logp
    caps = top2gap_fanout_caps(lp, 4, 2.0, 1e6)
    assert (caps == 4).all()
    assert_tree_equal(build_tree(tok, lp, root, 30, caps), build_tree(tok, lp, root, 30))
    # a huge gap (a confident draft) gives a chain
    sharp = lp.clone()
    sharp[..., 1:] = -50.0
    assert (top2gap_fanout_caps(sharp, 4, 2.0, 1.0) == 1).all()


def test_input_checks_name_the_problem():
    tok, lp, root = make_inputs(2, 3, 2, "continuous", 0)
    bad = [
        ((tok[0], lp[0], root, 5), "must both be"),
        ((tok, lp[:, :, :1], root, 5), "must both be"),
        ((tok, lp, root[:1], 5), "root_tokens_B"),
        ((tok.float(), lp, root, 5), "int32/int64"),
        ((tok, lp.long(), root, 5), "floating"),
        ((tok, lp, root, 0), "budget"),
        ((tok, lp, root, 5.0), "budget"),
        ((tok, lp, root, 5, torch.ones(2, 2, dtype=torch.int64)), "fanout_caps_BL"),
        ((tok[:, :0], lp[:, :0], root, 5), "depth L=0"),
    ]
    for args, message in bad:
        for builder in (build_tree, build_tree_exact):
            with pytest.raises(ValueError, match=message):
                builder(*args)


def test_nan_logprobs_raise_in_every_builder():
    tok, lp, root = make_inputs(2, 4, 3, "continuous", 0)
    lp[1, 2, 1] = math.nan
    for builder in (build_tree, build_tree_exact, build_tree_batch_ref, build_tree_host):
        with pytest.raises(ValueError, match="NaN"):
            builder(tok, lp, root, 20)
    with torch_route(), pytest.raises(ValueError, match="NaN"):
        build_tree(tok, lp, root, 20)
    assert build_tree_topk(tok, lp, root, 20) is None  # declines; the host (CPU) or exact (CUDA) builder raises


def test_clamp_makes_noise_above_zero_harmless():
    """A rank-0 log-prob of +1e-7 is 0 to every builder: the same tree as with exactly 0."""
    tok, lp, root = make_inputs(2, 5, 3, "continuous", 4)
    noisy, clean = lp.clone(), lp.clone()
    noisy[..., 0], clean[..., 0] = 1e-7, 0.0
    assert_tree_equal(build_tree(tok, noisy, root, 40), build_tree_batch_ref(tok, clean, root, 40))
    assert_tree_equal(build_tree_batch_ref(tok, noisy, root, 40), build_tree_batch_ref(tok, clean, root, 40))


def test_small_cpu_batches_take_the_host_route():
    """B * N <= HOST_MAX_NODES on CPU: the heaps on host lists; larger batches: the batched torch builder."""
    tok, lp, root = make_inputs(1, 7, 7, "draft", 3)
    assert use_host_builder(lp, 16)
    big = make_inputs(tree_host.HOST_MAX_NODES // 16 + 1, 7, 7, "draft", 3)
    assert not use_host_builder(big[1], 16)
    # batches the fast path declines: exact ties (best_first's lists path) and rows out of rank order (both algos)
    tied = make_inputs(tree_host.HOST_MAX_NODES // 16 + 1, 7, 7, "ties", 3)
    unsorted = make_inputs(tree_host.HOST_MAX_NODES // 16 + 1, 7, 7, "unsorted", 3)
    assert build_tree_topk(*tied, 16, best_first=True) is None and build_tree_topk(*unsorted, 16) is None
    for inputs in ((tok, lp, root), big, tied, unsorted):  # every route, either algo, equals the reference
        for best_first in (False, True):
            assert_tree_equal(build_tree(*inputs, 16, best_first=best_first),
                              build_tree_batch_ref(*inputs, 16, best_first=best_first))
