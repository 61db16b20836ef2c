"""ops.py dispatch, kernel launcher validation, light imports, and the kernels compiled for sm_90 (H100/H200).

None of this launches a kernel, so it runs without a GPU and without the interpreter. The sm_90 build uses the
ptxas bundled with triton: it catches what the interpreter accepts but the compiler rejects (non-constexpr
globals, loop-carried type changes, unsupported ops), which the CPU tests cannot see.
"""
import os
import subprocess
import sys

import pytest
import torch

from jetspec_sglang import mask, ops, tree, verify
from jetspec_sglang.kernels import accept_greedy, tree_build, tree_mask, verify_mask


def test_backend_resolution(monkeypatch):
    cpu = torch.zeros(1)
    assert ops.resolve_backend(cpu, "torch") == "torch"
    assert ops.resolve_backend(cpu, "auto") == "torch"  # auto = Triton on CUDA tensors only
    with pytest.raises(ValueError, match="JETSPEC_OPS_BACKEND"):
        ops.resolve_backend(cpu, "cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1.*JETSPEC_OPS_BACKEND=auto or torch"):
        ops.build_ancestor_mask(torch.tensor([[-1, 0]]), backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert ops.resolve_backend(cpu, "triton") == "triton"


def test_best_first_has_no_kernel_and_takes_the_torch_builder(monkeypatch):
    """best_first on any backend is tree.build_tree (no Triton twin): even 'triton' without the interpreter builds
    the reference tree instead of raising."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    gen = torch.Generator().manual_seed(1)
    lp, tokens = torch.log_softmax(torch.randn(2, 5, 30, generator=gen), -1).topk(4, -1)
    root = torch.tensor([3, 4])
    want = tree.build_tree_batch_ref(tokens, lp, root, 10, best_first=True)
    for backend in ("auto", "torch", "triton"):
        got = ops.build_tree(tokens, lp, root, 10, backend=backend, best_first=True)
        assert torch.equal(got.tokens_BN, want.tokens_BN) and torch.equal(got.parents_BN, want.parents_BN)


def test_torch_backend_is_the_twins():
    gen = torch.Generator().manual_seed(0)
    lp, tokens = torch.log_softmax(torch.randn(2, 4, 20, generator=gen), -1).topk(3, -1)
    root = torch.tensor([1, 2])
    t = ops.build_tree(tokens, lp, root, 12, backend="torch")
    assert torch.equal(t.tokens_BN, tree.build_tree_batch_ref(tokens, lp, root, 12).tokens_BN)
    prefix = torch.tensor([3, 0])
    tm = ops.build_tree_mask(t.parents_BN, t.depth_BN, prefix, backend="torch")
    assert torch.equal(tm.mask_BNN, mask.build_ancestor_mask(t.parents_BN))
    assert torch.equal(tm.positions_BN, mask.tree_positions(t.depth_BN, prefix))
    assert all(torch.equal(a, b) for a, b in zip(tm[2:], mask.build_retrieve_links(t.parents_BN)))
    full = ops.build_verify_mask_full(tm.mask_BNN, prefix, backend="torch")
    assert torch.equal(full, mask.build_verify_mask_full(tm.mask_BNN, prefix))
    choice = torch.randint(0, 20, (2, 12), generator=gen)
    got = ops.accept_greedy(t.tokens_BN, t.parents_BN, t.depth_BN, choice, 4, backend="torch")
    assert torch.equal(got.path_BP, verify.accept_greedy(t.tokens_BN, t.parents_BN, t.depth_BN, choice, 4).path_BP)


def test_launchers_reject_bad_inputs():
    i64 = dict(dtype=torch.int64)
    tok, lp, root = torch.zeros(2, 3, 4, **i64), torch.zeros(2, 3, 4), torch.zeros(2, **i64)
    with pytest.raises(ValueError, match="topk_logprobs_BLK has dtype torch.int64"):
        tree_build.tree_build(tok, tok, root, 8)
    with pytest.raises(ValueError, match="budget=1025"):
        tree_build.tree_build(tok, lp, root, 1025)
    with pytest.raises(ValueError, match="fanout_caps_BL must be"):
        tree_build.tree_build(tok, lp, root, 8, torch.ones(2, 4, **i64))
    with pytest.raises(ValueError, match="topk_tokens_BLK must be contiguous"):
        tree_build.tree_build(tok.transpose(1, 2).contiguous().transpose(1, 2), lp, root, 8)
    with pytest.raises(ValueError, match="root_tokens_B is on meta"):
        tree_build.tree_build(tok, lp, torch.zeros(2, device="meta", **i64), 8)
    parents = torch.tensor([[-1, 0, 0]])
    with pytest.raises(ValueError, match="parents_BN is torch.int32"):
        tree_mask.tree_mask(parents.int())
    with pytest.raises(ValueError, match="positions need both"):
        tree_mask.tree_mask(parents, depth_BN=torch.zeros(1, 3, **i64))
    with pytest.raises(ValueError, match="prefix_lens_B is torch.float32"):
        tree_mask.tree_mask(parents, torch.zeros(1, 3, **i64), torch.zeros(1))
    with pytest.raises(ValueError, match="mask_BNN must be"):
        verify_mask.verify_mask(torch.ones(1, 3, 2, dtype=torch.bool), torch.zeros(1, **i64))
    with pytest.raises(ValueError, match="mask_BNN has dtype torch.uint8"):
        verify_mask.verify_mask(torch.ones(1, 3, 3, dtype=torch.uint8), torch.zeros(1, **i64))
    with pytest.raises(ValueError, match="target_choice_BN is torch.int32"):
        accept_greedy.accept_greedy(parents, parents, parents, parents.int(), 2)
    with pytest.raises(ValueError, match="max_depth=-1"):
        accept_greedy.accept_greedy(parents, parents, parents, parents, -1)


def test_imports_stay_light():
    """The bench machine has only torch and triton: the ops and kernels import nothing else of the stack."""
    code = (
        "import sys\n"
        "import jetspec_sglang.tree, jetspec_sglang.mask, jetspec_sglang.verify, jetspec_sglang.ops\n"
        "assert 'triton' not in sys.modules, 'importing ops must not import triton'\n"
        "from jetspec_sglang.kernels import accept_greedy, tree_build, tree_mask, verify_mask\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('sglang', 'transformers', 'safetensors', "
        "'huggingface_hub', 'kernels'))\n"
        "ours = sorted(m for m in sys.modules if m.startswith('jetspec_sglang'))\n"
        "print(heavy, ours)\n"
        "assert not heavy, heavy\n"
        "assert set(ours) <= {'jetspec_sglang', 'jetspec_sglang.config', 'jetspec_sglang.tree', 'jetspec_sglang.mask',"
        " 'jetspec_sglang.verify', 'jetspec_sglang.ops', 'jetspec_sglang.kernels', 'jetspec_sglang.kernels.tree_build',"
        " 'jetspec_sglang.kernels.tree_mask', 'jetspec_sglang.kernels.verify_mask',"
        " 'jetspec_sglang.kernels.accept_greedy', 'jetspec_sglang.tree_batched', 'jetspec_sglang.tree_exact'}, ours\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr


# Pointer and scalar types of each kernel, and the constexprs and warps of the variants built for sm_90.
SIGNATURES = {
    "tree_build": (tree_build, "_tree_build_kernel", dict(
        topk_tokens_ptr="*i64", topk_logprobs_ptr="*fp32", root_tokens_ptr="*i64", caps_ptr="*i64",
        tokens_ptr="*i64", parents_ptr="*i64", depth_ptr="*i64", num_nodes_ptr="*i64", cum_ptr="*fp32",
        N="i32", L="i32", K="i32"),
        [dict(HAS_CAPS=False, BLOCK_N=256, num_warps=1), dict(HAS_CAPS=True, BLOCK_N=1024, num_warps=4)]),
    "tree_mask": (tree_mask, "_tree_mask_kernel", dict(
        parents_ptr="*i64", depth_ptr="*i64", prefix_ptr="*i32", mask_ptr="*i1", positions_ptr="*i64",
        retrieve_index_ptr="*i64", first_child_ptr="*i64", next_sibling_ptr="*i64", N="i32", max_steps="i32"),
        [dict(WRITE_MASK=True, WRITE_POSITIONS=True, WRITE_LINKS=True, BLOCK_R=16, BLOCK_C=128),
         dict(WRITE_MASK=False, WRITE_POSITIONS=False, WRITE_LINKS=True, BLOCK_R=8, BLOCK_C=256)]),
    "verify_mask": (verify_mask, "_verify_mask_kernel", dict(
        mask_ptr="*i1", prefix_ptr="*i64", out_ptr="*i1", B="i32", N="i32", total="i64"),
        [dict(BLOCK_B=32, BLOCK_N=128, BLOCK_S=1024)]),
    "accept_greedy": (accept_greedy, "_accept_greedy_kernel", dict(
        tokens_ptr="*i64", parents_ptr="*i64", choice_ptr="*i64", path_ptr="*i64", accept_lens_ptr="*i64",
        bonus_ptr="*i64", emitted_ptr="*i64", N="i32", P="i32"), [dict(BLOCK_N=256, BLOCK_P=16, num_warps=1)]),
}


# False when test_kernels.py ran first in this process and loaded triton in interpreter mode.
COMPILED = type(tree_build._tree_build_kernel).__name__ != "InterpretedFunction"


@pytest.mark.skipif(not COMPILED, reason="triton is in interpreter mode in this process (see the subprocess test)")
@pytest.mark.parametrize("name", list(SIGNATURES))
def test_kernels_compile_for_sm90(name):
    triton = pytest.importorskip("triton")
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as e:
        pytest.skip(f"this triton has no ahead-of-time compile API: {e}")
    module, kernel_name, types, variants = SIGNATURES[name]
    kernel = getattr(module, kernel_name)
    for variant in variants:
        constexprs = {k: v for k, v in variant.items() if k != "num_warps"}
        sig = {p.name: "constexpr" if p.is_constexpr else types[p.name] for p in kernel.params}
        compiled = triton.compile(ASTSource(kernel, sig, constexprs=constexprs), target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": variant.get("num_warps", 4)})
        assert compiled.asm.get("cubin"), f"{name} {constexprs}: no cubin"


@pytest.mark.skipif(COMPILED, reason="the sm_90 builds run in this process")
def test_kernels_compile_for_sm90_in_a_subprocess():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "compile_for_sm90["]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=os.path.dirname(__file__))
    tail = (run.stdout + run.stderr)[-6000:]
    assert run.returncode == 0 and " passed" in tail and " skipped" not in tail, f"sm_90 builds failed:\n{tail}"
