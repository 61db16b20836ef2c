"""Verify structures (mask.py) against naive constructions and against SGLang's own link derivation.

Oracles: the mask is the ancestor closure (walk up the parents); row sums are depth + 1; links are a naive scan;
links -> parents -> mask round-trips; the FULL layout equals a per-request loop (cat ones(N, S_b) and mask_b).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetspec_sglang.mask import (
    NO_LINK,
    build_ancestor_mask,
    build_retrieve_links,
    build_verify_mask_full,
    parents_from_links,
    tree_positions,
)
from jetspec_sglang.tree import NO_PARENT, build_tree, draft_topk

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def random_parents(B: int, N: int, seed: int, detached: float = 0.1, pad: int = 0) -> torch.Tensor:
    """parents[i] ~ U[0, i); a fraction `detached` of nodes (and the last `pad`) have NO_PARENT (a forest)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.arange(N)
    parents = (torch.rand(B, N, generator=gen) * idx).floor().long()
    parents[torch.rand(B, N, generator=gen) < detached] = NO_PARENT
    parents[:, 0] = NO_PARENT
    if pad:
        parents[:, N - pad:] = NO_PARENT
    return parents


def naive_ancestors(parents: list) -> list:
    """For each node, the set of its ancestors and itself (walk up)."""
    out = []
    for i in range(len(parents)):
        seen, j = {i}, parents[i]
        while j != NO_PARENT:
            seen.add(j)
            j = parents[j]
        out.append(seen)
    return out


def naive_mask(parents_BN: torch.Tensor) -> torch.Tensor:
    N = parents_BN.shape[1]
    rows = [[[j in anc for j in range(N)] for anc in naive_ancestors(par)] for par in parents_BN.tolist()]
    return torch.tensor(rows, dtype=torch.bool).reshape(parents_BN.shape[0], N, N)


def naive_links(parents_BN: torch.Tensor):
    B, N = parents_BN.shape
    first_child = torch.full((B, N), NO_LINK)
    next_sibling = torch.full((B, N), NO_LINK)
    for b in range(B):
        par = parents_BN[b].tolist()
        for i in range(N):
            kids = [k for k in range(N) if par[k] == i]
            first_child[b, i] = kids[0] if kids else NO_LINK
            if par[i] != NO_PARENT:
                later = [k for k in range(i + 1, N) if par[k] == par[i]]
                next_sibling[b, i] = later[0] if later else NO_LINK
    return first_child, next_sibling


def tree_from_builder(B: int, N: int, seed: int, L: int = 6, K: int = 3):
    gen = torch.Generator().manual_seed(seed)
    tok, lp = draft_topk(torch.randn(B, L, 50, generator=gen) * 3, K)
    return build_tree(tok, lp, torch.randint(0, 50, (B,), generator=gen), N)


def naive_depth(parents: list) -> list:
    return [len(anc) - 1 for anc in naive_ancestors(parents)]


# ---------------------------------------------------------------- ancestor mask, positions


@settings(max_examples=200, **SETTINGS)
@given(B=st.integers(1, 3), N=st.integers(1, 70), seed=st.integers(0, 2**31 - 1),
       detached=st.sampled_from([0.0, 0.2]), pad=st.integers(0, 5))
def test_ancestor_mask_is_closure_of_random_trees(B, N, seed, detached, pad):
    parents = random_parents(B, N, seed, detached, min(pad, N - 1))
    want = naive_mask(parents)
    assert torch.equal(build_ancestor_mask(parents), want)
    depth = [naive_depth(parents[b].tolist()) for b in range(B)]
    assert torch.equal(build_ancestor_mask(parents, max_depth=max(max(d) for d in depth)), want)
    assert build_ancestor_mask(parents).sum(-1).tolist() == [[d + 1 for d in row] for row in depth]


@settings(max_examples=100, **SETTINGS)
@given(B=st.integers(1, 4), N=st.sampled_from([1, 2, 5, 17, 64, 130]), seed=st.integers(0, 2**31 - 1),
       L=st.integers(1, 8), K=st.integers(1, 4))
def test_ancestor_mask_of_built_trees(B, N, seed, L, K):
    tree = tree_from_builder(B, N, seed, L, K)
    mask = build_ancestor_mask(tree.parents_BN, max_depth=L)
    assert torch.equal(mask, naive_mask(tree.parents_BN))
    assert torch.equal(mask.sum(-1), tree.depth_BN + 1), "row sums are depth + 1 (padding: only itself)"
    assert torch.equal(mask, build_ancestor_mask(tree.parents_BN))
    assert mask.dtype == torch.bool and mask.shape == (B, N, N)


def test_ancestor_mask_docstring_example_and_depth_bound():
    parents = torch.tensor([[-1, 0, 0, 1]])
    rows = [set(torch.nonzero(r).flatten().tolist()) for r in build_ancestor_mask(parents)[0]]
    assert rows == [{0}, {0, 1}, {0, 2}, {0, 1, 3}]
    chain = torch.arange(-1, 15)[None]  # depth 15 needs 4 jump rounds; max_depth=7 (3 rounds) must miss the root
    assert build_ancestor_mask(chain, max_depth=15)[0, 15].all()
    assert not build_ancestor_mask(chain, max_depth=7)[0, 15, 0]


def test_tree_positions():
    depth = torch.tensor([[0, 1, 1, 2], [0, 1, 2, 0]])
    pos = tree_positions(depth, torch.tensor([7, 0], dtype=torch.int32))
    assert pos.dtype == torch.int64
    assert pos.tolist() == [[7, 8, 8, 9], [0, 1, 2, 0]]


# ---------------------------------------------------------------- links


@settings(max_examples=300, **SETTINGS)
@given(B=st.integers(1, 3), N=st.integers(1, 60), seed=st.integers(0, 2**31 - 1),
       detached=st.sampled_from([0.0, 0.2]), pad=st.integers(0, 5))
def test_links_equal_naive_scan_and_round_trip(B, N, seed, detached, pad):
    parents = random_parents(B, N, seed, detached, min(pad, N - 1))
    index, first_child, next_sibling = build_retrieve_links(parents)
    want_fc, want_ns = naive_links(parents)
    assert torch.equal(first_child, want_fc) and torch.equal(next_sibling, want_ns)
    assert torch.equal(index, torch.arange(B * N).reshape(B, N))
    assert all(t.dtype == torch.int64 for t in (index, first_child, next_sibling))
    back = parents_from_links(first_child, next_sibling)
    assert torch.equal(back, parents), "links -> parents"
    assert torch.equal(build_ancestor_mask(back), build_ancestor_mask(parents)), "links -> parents -> mask"


def test_links_of_built_trees_round_trip():
    tree = tree_from_builder(4, 100, 3, L=10, K=4)
    _, fc, ns = build_retrieve_links(tree.parents_BN)
    assert torch.equal(parents_from_links(fc, ns), tree.parents_BN)
    want_fc, want_ns = naive_links(tree.parents_BN)
    assert torch.equal(fc, want_fc) and torch.equal(ns, want_ns)


def test_links_docstring_example():
    _, fc, ns = build_retrieve_links(torch.tensor([[-1, 0, 0, 1]]))
    assert fc.tolist() == [[1, 3, -1, -1]] and ns.tolist() == [[-1, 2, -1, -1]]
    # root and padding (all NO_PARENT) are never siblings of each other
    _, fc, ns = build_retrieve_links(torch.tensor([[-1, 0, -1, -1]]))
    assert fc.tolist() == [[1, -1, -1, -1]] and ns.tolist() == [[-1, -1, -1, -1]]


# ---------------------------------------------------------------- FULL mask


def full_mask_loop(mask_BNN: torch.Tensor, prefix: list) -> torch.Tensor:
    """NGRAM's recipe (sglang-integration.md 9.3), one request at a time."""
    N = mask_BNN.shape[1]
    parts = [torch.cat([torch.ones(N, s, dtype=torch.bool), mask_BNN[b]], 1).reshape(-1) for b, s in enumerate(prefix)]
    return torch.cat(parts)


@settings(max_examples=150, **SETTINGS)
@given(B=st.integers(1, 4), N=st.integers(1, 20), seed=st.integers(0, 2**31 - 1),
       prefix=st.lists(st.integers(0, 30), min_size=4, max_size=4))
def test_full_mask_equals_per_request_loop(B, N, seed, prefix):
    prefix = prefix[:B]
    mask = build_ancestor_mask(random_parents(B, N, seed, 0.1))
    want = full_mask_loop(mask, prefix)
    prefix_B = torch.tensor(prefix, dtype=torch.int32)
    got = build_verify_mask_full(mask, prefix_B)
    assert got.dtype == torch.bool and torch.equal(got, want)
    total = N * sum(s + N for s in prefix)
    assert torch.equal(build_verify_mask_full(mask, prefix_B, total=total), want)
    padded = build_verify_mask_full(mask, prefix_B, total=total + 13)  # a larger buffer: tail stays True
    assert torch.equal(padded[:total], want) and padded[total:].all()


def test_full_mask_docstring_example():
    mask = torch.tensor([[[1, 0], [1, 1]], [[1, 0], [1, 1]]], dtype=torch.bool)
    got = build_verify_mask_full(mask, torch.tensor([1, 0]))
    assert got.int().tolist() == [1, 1, 0, 1, 1, 1, 1, 0, 1, 1]


# ---------------------------------------------------------------- SGLang's own derivation

_SGLANG_SCRIPT = textwrap.dedent("""
    import os, sys, types, importlib
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    try:
        importlib.import_module("sgl_kernel.speculative")
    except ImportError:  # CPU box: the compiled op this module imports at top level is absent; only the
        stub = types.ModuleType("sgl_kernel.speculative")  # Triton twin below is exercised
        stub.reconstruct_indices_from_tree_mask = None
        sys.modules["sgl_kernel.speculative"] = stub
    import torch
    from sglang.kernels.ops.speculative.reconstruct_tree import reconstruct_indices_from_tree_mask_triton
    cases = torch.load(sys.argv[1])
    out = []
    for mask, seq_lens in cases:
        B, N, _ = mask.shape
        positions = torch.full((B * N,), -7, dtype=torch.int64)
        index, next_token, next_sibling = (torch.full((B, N), -7, dtype=torch.int64) for _ in range(3))
        reconstruct_indices_from_tree_mask_triton(mask.reshape(-1).contiguous(), seq_lens, positions, index,
                                                  next_token, next_sibling, B, N)
        out.append((positions.reshape(B, N), index, next_token, next_sibling))
    torch.save(out, sys.argv[2])
""")


@pytest.mark.sglang
def test_links_and_positions_equal_sglang_reconstruct(tmp_path):
    """`build_retrieve_links` + `tree_positions` == SGLang's reconstruct_indices_from_tree_mask (Triton, interpreted)."""
    cases = []
    for seed, (B, N) in enumerate([(1, 1), (2, 7), (3, 33), (2, 128)]):
        parents = random_parents(B, N, seed, detached=0.1, pad=min(3, N - 1))
        cases.append((parents, torch.randint(0, 50, (B,), generator=torch.Generator().manual_seed(seed))))
    tree = tree_from_builder(3, 64, 11, L=4, K=2)  # 31 real nodes: padding included
    cases.append((tree.parents_BN, torch.tensor([0, 5, 1000])))
    masks = [(build_ancestor_mask(p), s.to(torch.int64)) for p, s in cases]
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save(masks, src)
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, "-c", _SGLANG_SCRIPT, str(src), str(dst)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for (parents, seq_lens), (positions, index, next_token, next_sibling) in zip(cases, torch.load(dst)):
        mine = build_retrieve_links(parents)
        depth = build_ancestor_mask(parents).sum(-1) - 1
        where = json.dumps(parents.tolist())[:200]
        assert torch.equal(index, mine[0]), where
        assert torch.equal(next_token, mine[1]), where
        assert torch.equal(next_sibling, mine[2]), where
        assert torch.equal(positions, tree_positions(depth, seq_lens)), where
