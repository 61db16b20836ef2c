"""Triton kernels == their PyTorch twins, exactly: on CPU through the Triton interpreter, on CUDA when present.

Triton decides interpreter or compiler when `triton` and each kernel module are imported, so TRITON_INTERPRET=1
must be set before the process's first `import triton`. Run alone on a machine without CUDA, this module sets it
for its imports only (no other module or subprocess sees it; triton itself stays in interpreter mode for the rest
of this process). In a full-suite run something imports triton earlier (transformers does), and on a GPU machine
the kernels must stay compiled for the `gpu` tests; then the CPU cases skip here and
`test_kernels_under_the_interpreter` reruns them in a subprocess with TRITON_INTERPRET=1. Twins:
tree.build_tree_ref (exact heap) and build_tree, mask.py, verify.accept_greedy; every kernel is reached through
ops.py with backend="triton".
"""
import os
import subprocess
import sys

import pytest
import torch

_SET_HERE = "triton" not in sys.modules and "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available()
if _SET_HERE:
    os.environ["TRITON_INTERPRET"] = "1"
try:
    from jetspec_sglang.kernels import accept_greedy, tree_build, tree_mask, verify_mask
finally:
    if _SET_HERE:
        del os.environ["TRITON_INTERPRET"]
try:
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:  # another triton layout: treat the kernels as compiled
    InterpretedFunction = ()

from jetspec_sglang import mask, ops, tree, verify  # noqa: E402

INTERPRETED = all(isinstance(k, InterpretedFunction) for k in (
    tree_build._tree_build_kernel, tree_mask._tree_mask_kernel, verify_mask._verify_mask_kernel,
    accept_greedy._accept_greedy_kernel))
CHILD_ENV = "JETSPEC_KERNEL_TESTS_CHILD"  # set in the interpreter subprocess


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request, monkeypatch):
    if request.param == "cpu":
        if not INTERPRETED:
            pytest.skip("triton was imported without TRITON_INTERPRET=1 in this process; "
                        "test_kernels_under_the_interpreter runs these cases in a subprocess")
        monkeypatch.setenv("TRITON_INTERPRET", "1")  # ops.py refuses CPU tensors for Triton otherwise
    elif INTERPRETED:
        pytest.skip("kernels were built for the interpreter in this process; run without TRITON_INTERPRET")
    return torch.device(request.param)


def _equal(got, want, what):
    """Every field of a DraftTree / TreeMask / AcceptResult: same dtype, shape and values."""
    names = want._fields if hasattr(want, "_fields") else list(want.__dataclass_fields__)
    for name in names:
        g, w = getattr(got, name), getattr(want, name)
        assert g.dtype == w.dtype and g.shape == w.shape, f"{what}.{name}: {g.dtype} {g.shape} vs {w.dtype} {w.shape}"
        assert torch.equal(g.cpu(), w.cpu()), f"{what}.{name} differs:\n{g.cpu()}\nvs twin\n{w.cpu()}"


def _tables(B, L, K, gen, ties=False, V=50, lp_dtype=torch.float32, tok_dtype=torch.int64):
    """Per-depth top-K (tokens, log-probs) in rank order; `ties` draws log-probs from {0, -0.5, -1, -inf}."""
    if ties:
        lp = torch.tensor([0.0, -0.5, -1.0, float("-inf")])[torch.randint(0, 4, (B, L, K), generator=gen)]
        lp = lp.sort(-1, descending=True).values
        tokens = torch.randint(0, V, (B, L, K), generator=gen)
    else:
        lp, tokens = torch.log_softmax(torch.randn(B, L, V, generator=gen), -1).topk(K, -1)
    return tokens.to(tok_dtype), lp.to(lp_dtype)


BUILD_CASES = [  # B, L, K, N, ties, caps, lp dtype
    (3, 15, 7, 64, False, False, torch.float32),
    (2, 15, 7, 256, False, False, torch.float32),  # the budget maximum of the CUDA-graph buckets
    (2, 15, 7, 128, False, True, torch.float32),  # top2gap caps
    (3, 4, 3, 40, True, False, torch.float64),  # exact float64 ties (and -inf, floored)
    (3, 4, 3, 40, True, True, torch.float32),
    (2, 1, 5, 9, False, False, torch.bfloat16),  # depth 1: one expansion, then padding
    (2, 6, 1, 12, False, False, torch.float32),  # K = 1: a chain, padded past depth 6
    (2, 3, 2, 30, False, True, torch.float64),  # the heap empties: padding nodes
    (2, 15, 7, 1, False, False, torch.float32),  # N = 1: root only
    (1, 15, 7, 1024, False, False, torch.float32),  # SGLang's largest tree
]


@pytest.mark.parametrize("B,L,K,N,ties,caps,lp_dtype", BUILD_CASES)
def test_tree_build_equals_heap_reference(device, B, L, K, N, ties, caps, lp_dtype):
    gen = torch.Generator().manual_seed(N * 31 + L)
    tokens, lp = _tables(B, L, K, gen, ties, lp_dtype=lp_dtype, tok_dtype=torch.int32 if caps else torch.int64)
    root = torch.randint(0, 50, (B,), generator=gen)
    fanout = None
    if caps:  # random caps, some outside [1, K] to check the clamp, and the real top2gap rule
        fanout = torch.randint(-1, K + 3, (B, L), generator=gen)
        fanout[0] = tree.top2gap_fanout_caps(lp.float(), K, 2.0, 1.0)[0]
    want = tree.build_tree_batch_ref(tokens, lp, root, N, fanout)
    got = ops.build_tree(tokens.to(device), lp.to(device), root.to(device), N,
                         None if fanout is None else fanout.to(device), backend="triton")
    _equal(got, want, "DraftTree")
    _equal(ops.build_tree(tokens, lp, root, N, fanout, backend="torch"), want, "batched twin")


@pytest.mark.gpu
@pytest.mark.parametrize("B,L,K,N,ties,caps,lp_dtype", BUILD_CASES)
def test_best_first_on_cuda_equals_heap_reference(B, L, K, N, ties, caps, lp_dtype):
    """best_first has no kernel: on CUDA tensors ops.build_tree runs tree_exact with no host read; same trees."""
    gen = torch.Generator().manual_seed(N * 37 + L)
    tokens, lp = _tables(B, L, K, gen, ties, lp_dtype=lp_dtype)
    root = torch.randint(0, 50, (B,), generator=gen)
    fanout = tree.top2gap_fanout_caps(lp.float(), K, 2.0, 1.0) if caps else None
    want = tree.build_tree_batch_ref(tokens, lp, root, N, fanout, best_first=True)
    got = ops.build_tree(tokens.cuda(), lp.cuda(), root.cuda(), N, None if fanout is None else fanout.cuda(),
                         best_first=True)
    _equal(got, want, "DraftTree (best_first, CUDA)")


def test_tree_build_property(device):
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=25, deadline=None, derandomize=True, database=None)
    @hypothesis.given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 4), st.integers(1, 48), st.booleans(),
                      st.booleans(), st.integers(0, 2**31 - 1))
    def check(B, L, K, N, ties, caps, seed):
        gen = torch.Generator().manual_seed(seed)
        tokens, lp = _tables(B, L, K, gen, ties)
        root = torch.randint(0, 50, (B,), generator=gen)
        fanout = torch.randint(1, K + 1, (B, L), generator=gen, dtype=torch.int32) if caps else None
        want = tree.build_tree_batch_ref(tokens, lp, root, N, fanout)
        got = ops.build_tree(tokens.to(device), lp.to(device), root.to(device), N,
                             None if fanout is None else fanout.to(device), backend="triton")
        _equal(got, want, "DraftTree")

    check()


def _random_parents(B, N, gen):
    """parents[i] ~ U[0, i) for real nodes, NO_PARENT at the root and at trailing padding; depth to match."""
    parents = torch.full((B, N), tree.NO_PARENT, dtype=torch.int64)
    depth = torch.zeros(B, N, dtype=torch.int64)
    for b in range(B):
        n = int(torch.randint(1, N + 1, (1,), generator=gen))
        for i in range(1, n):
            parents[b, i] = int(torch.randint(0, i, (1,), generator=gen))
            depth[b, i] = depth[b, parents[b, i]] + 1
    return parents, depth


MASK_CASES = [  # B, N, source, max_depth ("shallow": a depth-2 heap tree, cheap for the interpreter)
    (3, 64, "heap", 15),
    (1, 256, "heap", None),
    (4, 40, "random", None),
    (3, 33, "random", 2),  # shallower than the trees: the twin's pointer jumping reaches distance 3 only
    (2, 9, "heap", 1),
    (2, 1, "heap", 15),
    (1, 300, "random", None),  # more columns than one tile
    (1, 1024, "shallow", 15),
]


@pytest.mark.parametrize("B,N,source,max_depth", MASK_CASES)
def test_tree_mask_equals_twins(device, B, N, source, max_depth):
    gen = torch.Generator().manual_seed(N + B)
    if source in ("heap", "shallow"):
        tokens, lp = _tables(B, 15, 3, gen) if source == "heap" else _tables(B, 2, 32, gen)
        t = tree.build_tree(tokens, lp, torch.zeros(B, dtype=torch.int64), N)
        parents, depth = t.parents_BN, t.depth_BN
    else:
        parents, depth = _random_parents(B, N, gen)
    prefix = torch.randint(0, 100, (B,), generator=gen)
    prefix[0] = 0
    want = ops.TreeMask(mask.build_ancestor_mask(parents, max_depth), mask.tree_positions(depth, prefix),
                        *mask.build_retrieve_links(parents))
    p, d, s = parents.to(device), depth.to(device), prefix.to(device, torch.int32)
    _equal(ops.build_tree_mask(p, d, s, max_depth, backend="triton"), want, "TreeMask")
    assert torch.equal(ops.build_ancestor_mask(p, max_depth, backend="triton").cpu(), want.mask_BNN)
    for g, w in zip(ops.build_retrieve_links(p, backend="triton"), want[2:]):
        assert torch.equal(g.cpu(), w)


@pytest.mark.parametrize("B,N,max_prefix,extra", [(3, 8, 40, 0), (4, 16, 2500, 0), (3, 5, 9, 777), (1, 1, 0, 0),
                                                  (2, 64, 30, 3), (1, 256, 5, 0)])
def test_verify_mask_equals_twin(device, B, N, max_prefix, extra):
    gen = torch.Generator().manual_seed(N * 7 + B)
    mask_BNN = torch.rand(B, N, N, generator=gen) < 0.5
    prefix = torch.randint(0, max_prefix + 1, (B,), generator=gen)
    prefix[-1] = 0  # an empty prefix
    total = int(N * (prefix.sum() + B * N)) + extra
    want = mask.build_verify_mask_full(mask_BNN, prefix, total)
    m, s = mask_BNN.to(device), prefix.to(device)
    assert torch.equal(ops.build_verify_mask_full(m, s, total, backend="triton").cpu(), want)
    if extra == 0:  # total read from the prefix lengths
        assert torch.equal(ops.build_verify_mask_full(m, s.int(), backend="triton").cpu(), want)


def _choices_along_paths(tokens, parents, gen, V):
    """Target choices that follow a random child at most nodes, so long paths get accepted."""
    B, N = tokens.shape
    choice = torch.randint(0, V, (B, N), generator=gen)
    for b in range(B):
        for i in torch.randperm(N, generator=gen).tolist():
            p = int(parents[b, i])
            if p >= 0 and torch.rand(1, generator=gen) < 0.8:
                choice[b, p] = tokens[b, i]
    return choice


ACCEPT_CASES = [  # B, L, K, N, V (a small V gives duplicate sibling tokens)
    (4, 15, 7, 64, 50),
    (3, 15, 7, 256, 3),
    (4, 4, 3, 40, 2),
    (2, 6, 1, 12, 5),  # chain
    (2, 1, 5, 9, 4),  # depth 1
    (2, 15, 7, 1, 5),  # root only
    (1, 15, 7, 1024, 3),
]


@pytest.mark.parametrize("B,L,K,N,V", ACCEPT_CASES)
def test_accept_greedy_equals_twin(device, B, L, K, N, V):
    gen = torch.Generator().manual_seed(N * 3 + V)
    table_tokens = torch.randint(0, V, (B, L, K), generator=gen)  # duplicates allowed: siblings may repeat
    _, lp = _tables(B, L, K, gen)
    t = tree.build_tree(table_tokens, lp, torch.randint(0, V, (B,), generator=gen), N)
    for trial in range(3):
        choice = (_choices_along_paths(t.tokens_BN, t.parents_BN, gen, V) if trial
                  else torch.randint(0, V, (B, N), generator=gen))
        for max_depth in (L, L + 3):
            want = verify.accept_greedy(t.tokens_BN, t.parents_BN, t.depth_BN, choice, max_depth)
            got = ops.accept_greedy(t.tokens_BN.to(device), t.parents_BN.to(device), t.depth_BN.to(device),
                                    choice.to(device), max_depth, backend="triton")
            _equal(got, want, "AcceptResult")


def test_accept_greedy_first_matching_sibling_wins(device):
    tokens = torch.tensor([[9, 4, 7, 7, 5, 5]])  # nodes 2 and 3 are duplicate siblings; 4 under 2, 5 under 3
    parents = torch.tensor([[-1, 0, 0, 0, 2, 3]])
    depth = torch.tensor([[0, 1, 1, 1, 2, 2]])
    choice = torch.tensor([[7, 0, 5, 5, 1, 2]])
    got = ops.accept_greedy(*(x.to(device) for x in (tokens, parents, depth, choice)), 2, backend="triton")
    _equal(got, verify.accept_greedy(tokens, parents, depth, choice, 2), "AcceptResult")
    assert got.path_BP.tolist() == [[0, 2, 4]] and got.tokens_BP.tolist() == [[7, 5, 1]]
    assert got.accept_lens_B.tolist() == [3] and got.bonus_B.tolist() == [1]


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED, reason="kernels were built for the interpreter in this process")
def test_one_round_at_bench_shapes():
    """B=64, N=256, K=7, L=15 on CUDA (too slow for the interpreter): every op of a round, chained as the worker
    chains them."""
    device = torch.device("cuda")
    gen = torch.Generator().manual_seed(1)
    B, L, K, N = 64, 15, 7, 256
    tokens, lp = _tables(B, L, K, gen, V=1000)
    root = torch.randint(0, 1000, (B,), generator=gen)
    prefix = torch.randint(0, 3000, (B,), generator=gen)
    for fanout in (None, tree.top2gap_fanout_caps(lp, K, 2.0, 1.0)):
        want = tree.build_tree_batch_ref(tokens, lp, root, N, fanout)
        got = ops.build_tree(tokens.to(device), lp.to(device), root.to(device), N,
                             None if fanout is None else fanout.to(device), backend="triton")
        _equal(got, want, "DraftTree")
        tm = ops.build_tree_mask(got.parents_BN, got.depth_BN, prefix.to(device), L, backend="triton")
        _equal(tm, ops.build_tree_mask(want.parents_BN, want.depth_BN, prefix, L, backend="torch"), "TreeMask")
        full = ops.build_verify_mask_full(tm.mask_BNN, prefix.to(device), backend="triton")
        assert torch.equal(full.cpu(), mask.build_verify_mask_full(tm.mask_BNN.cpu(), prefix))
        choice = _choices_along_paths(want.tokens_BN, want.parents_BN, gen, 1000)
        acc = ops.accept_greedy(got.tokens_BN, got.parents_BN, got.depth_BN, choice.to(device), L, backend="triton")
        _equal(acc, verify.accept_greedy(want.tokens_BN, want.parents_BN, want.depth_BN, choice, L), "AcceptResult")


@pytest.mark.skipif(INTERPRETED or os.environ.get(CHILD_ENV) == "1", reason="the CPU cases run in this process")
def test_kernels_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", **{CHILD_ENV: "1"})
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "cpu"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=os.path.dirname(__file__))
    tail = (run.stdout + run.stderr)[-6000:]
    assert run.returncode == 0, f"interpreter run failed:\n{tail}"
    assert " passed" in tail and " skipped" not in tail, f"interpreter run skipped cases:\n{tail}"
