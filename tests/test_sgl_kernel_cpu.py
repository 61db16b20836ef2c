"""The CPU stand-in `sgl_kernel` (patches/sgl_kernel_cpu, ledger S1) equals SGLang's own Triton twin of every op it
implements, run on CPU tensors under TRITON_INTERPRET=1: exact integer equality on random inputs and on the edge
cases (empty batch, bs 1, several requests of different lengths, loops past one Triton block).
`copy_all_layer_kv_cache_cpu` is checked against a direct torch copy over real tensors; the ops it does not serve
raise NotImplementedError naming the op.

The Triton kernels are imported interpreted by sglang_fixtures.import_interpreted; when that is impossible in
this process (imported compiled earlier, or a CUDA machine) the cases rerun in a subprocess.
"""
import importlib.util
import os

import pytest
import torch

if importlib.util.find_spec("sglang") is None or importlib.util.find_spec("sgl_kernel") is None:
    pytest.skip("sglang / the sgl_kernel stand-in are not installed (run scripts/setup.sh)", allow_module_level=True)

import sglang_fixtures as fx  # noqa: E402

MODULES = fx.import_interpreted()  # first: before anything else imports triton

import sgl_kernel  # noqa: E402

from jetspec_sglang.mask import build_ancestor_mask, build_retrieve_links  # noqa: E402

pytestmark = pytest.mark.sglang

allocation = MODULES["sglang.srt.mem_cache.allocation"]
cache_locs = MODULES["sglang.kernels.ops.speculative.cache_locs"]
eagle = MODULES["sglang.kernels.ops.speculative.eagle"]
spec_tree = MODULES["sglang.kernels.ops.speculative.spec_tree"]
reconstruct_tree = MODULES["sglang.kernels.ops.speculative.reconstruct_tree"]
murmur_hash = MODULES["sglang.kernels.ops.sampling.murmur_hash"]

from sgl_kernel.speculative import reconstruct_indices_from_tree_mask  # noqa: E402
from sglang.srt.utils import next_power_of_2  # noqa: E402

INTERPRETED = fx.all_interpreted(
    allocation.assign_req_to_token_pool, cache_locs.assign_extend_cache_locs,
    cache_locs.assign_draft_cache_locs_contiguous, eagle.fill_accept_out_cache_loc, eagle.fill_bonus_tokens,
    spec_tree.verify_tree_greedy_kernel_triton, reconstruct_tree._reconstruct_tree_mask_kernel,
    murmur_hash.murmur_hash32_kernel)

# (prefix starts, lengths) per batch: empty, bs 1, several requests incl. a zero-length one and one that loops
# past the kernels' 32-slot block.
SEGMENTS = [
    ([], []),
    ([3], [5]),
    ([0, 7, 2, 11], [4, 0, 37, 9]),
    ([5, 0, 20], [1, 70, 2]),
]


@pytest.fixture
def interpreter(monkeypatch):
    if not INTERPRETED:
        pytest.skip("SGLang's kernels were imported compiled in this process; "
                    "test_cases_under_the_interpreter reruns this file with TRITON_INTERPRET=1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _batch(starts, lengths, gen, rows=6, pool_len=128):
    """A shuffled choice of pool rows, int64 start/end offsets, and a random int32 req_to_token table."""
    bs = len(starts)
    req_pool_indices = torch.randperm(rows, generator=gen)[:bs].to(torch.int64)
    start = torch.tensor(starts, dtype=torch.int64)
    end = start + torch.tensor(lengths, dtype=torch.int64)
    req_to_token = torch.randint(0, 10_000, (rows, pool_len), generator=gen, dtype=torch.int32)
    return req_pool_indices, start, end, req_to_token


@pytest.mark.parametrize("starts,lengths", SEGMENTS)
def test_assign_req_to_token_pool(interpreter, starts, lengths):
    gen = torch.Generator().manual_seed(len(starts))
    rpi, start, end, req_to_token = _batch(starts, lengths, gen)
    out_cache_loc = torch.randint(0, 10_000, (int(sum(lengths)),), generator=gen, dtype=torch.int64)
    got, want = req_to_token.clone(), req_to_token.clone()
    sgl_kernel.assign_req_to_token_pool_cpu(rpi, got, start, end, out_cache_loc, got.shape[1])
    bs = len(starts)
    allocation.assign_req_to_token_pool[(bs,)](rpi, want, start, end, out_cache_loc, want.shape[1],
                                               next_power_of_2(bs))
    assert torch.equal(got, want)
    assert (got != req_to_token).sum() == (want != req_to_token).sum()
    if lengths and lengths[-1]:  # the last request's slots are the tail of out_cache_loc
        row, s, e = int(rpi[-1]), int(start[-1]), int(end[-1])
        assert torch.equal(got[row, s:e].long(), out_cache_loc[-lengths[-1]:])


@pytest.mark.parametrize("starts,lengths", SEGMENTS)
def test_assign_extend_cache_locs(interpreter, starts, lengths):
    gen = torch.Generator().manual_seed(10 + len(starts))
    rpi, start, end, req_to_token = _batch(starts, lengths, gen)
    total = int(sum(lengths))
    got = torch.full((total + 3,), -7, dtype=torch.int64)  # slack: nothing past `total` may be written
    want = got.clone()
    sgl_kernel.assign_extend_cache_locs_cpu(rpi, req_to_token, start, end, got, req_to_token.shape[1])
    bs = len(starts)
    cache_locs.assign_extend_cache_locs[(bs,)](rpi, req_to_token, start, end, want, req_to_token.shape[1],
                                               next_power_of_2(bs))
    assert torch.equal(got, want)
    assert (got[total:] == -7).all() and (got[:total] != -7).all()


@pytest.mark.parametrize("bs,topk,steps", [(0, 1, 4), (1, 1, 5), (3, 1, 7), (2, 4, 40), (4, 2, 3)])
def test_assign_draft_cache_locs_contiguous(interpreter, bs, topk, steps):
    gen = torch.Generator().manual_seed(bs * 100 + steps)
    rows, pool_len = 6, 256
    rpi = torch.randperm(rows, generator=gen)[:bs].to(torch.int64)
    seq_lens = torch.randint(0, pool_len - topk * steps, (bs,), generator=gen, dtype=torch.int64)
    req_to_token = torch.randint(0, 10_000, (rows, pool_len), generator=gen, dtype=torch.int32)
    got = torch.full((bs * topk * steps,), -1, dtype=torch.int64)
    want = got.clone()
    sgl_kernel.assign_draft_cache_locs_contiguous_cpu(rpi, req_to_token, seq_lens, got, pool_len, topk, steps)
    if bs:
        cache_locs.assign_draft_cache_locs_contiguous[(bs,)](rpi, req_to_token, seq_lens, want, pool_len, topk,
                                                              steps, BS=bs)
    assert torch.equal(got, want)
    assert (got >= 0).all()


def _accept_index(bs, steps, n, gen):
    """[bs, steps] int32 global node ids (request b's nodes are b*n + i), -1 past a random accept length."""
    accept_lens = torch.randint(1, steps + 1, (bs,), generator=gen, dtype=torch.int32)
    nodes = torch.randint(0, n, (bs, steps), generator=gen) + torch.arange(bs)[:, None] * n
    keep = torch.arange(steps)[None, :] < accept_lens[:, None]
    return torch.where(keep, nodes, -1).to(torch.int32), accept_lens


@pytest.mark.parametrize("bs,steps,n", [(1, 1, 1), (1, 4, 8), (5, 3, 6), (7, 9, 16)])
def test_fill_accept_out_cache_loc(interpreter, bs, steps, n):
    gen = torch.Generator().manual_seed(bs * 10 + steps)
    accept_index, accept_lens = _accept_index(bs, steps, n, gen)
    out_cache_loc = torch.randperm(10_000, generator=gen)[: bs * n].to(torch.int64)
    size = bs * steps
    got = torch.zeros(size, dtype=torch.int64)
    want = got.clone()
    sgl_kernel.fill_accept_out_cache_loc_cpu(accept_index, out_cache_loc, got)
    eagle.fill_accept_out_cache_loc[(size,)](accept_index, out_cache_loc, want, next_power_of_2(size))
    assert torch.equal(got, want)
    valid = int(accept_lens.sum())
    assert torch.equal(got[:valid], out_cache_loc[accept_index[accept_index >= 0].long()])


@pytest.mark.parametrize("bs,steps", [(1, 1), (1, 5), (6, 4), (9, 8)])
def test_fill_bonus_tokens(interpreter, bs, steps):
    gen = torch.Generator().manual_seed(bs + steps)
    accept_index, accept_lens = _accept_index(bs, steps, 8, gen)
    predict = torch.randint(0, 2048, (bs * 8,), generator=gen, dtype=torch.int32)
    accept_tokens = predict[accept_index.long()]  # as eagle_worker_common does: [bs, steps], -1 rows read the end
    got = torch.full((bs,), -1, dtype=torch.int32)
    want = got.clone()
    sgl_kernel.fill_bonus_tokens_cpu(accept_tokens, accept_lens, got, steps)
    eagle.fill_bonus_tokens[(bs,)](accept_tokens, accept_lens, want, steps)
    assert torch.equal(got, want)
    assert torch.equal(got, accept_tokens[torch.arange(bs), accept_lens.long() - 1])


def _tree_batch(B, N, V, seed):
    """A random tree per request (parents ~ U[0, i)), tokens from a small vocab (duplicate siblings), SGLang links."""
    gen = torch.Generator().manual_seed(seed)
    parents = fx.random_parents(B, N, gen)
    candidates = torch.randint(0, V, (B, N), generator=gen)
    retrieve_index, first_child, next_sibling = build_retrieve_links(parents)
    return gen, parents, candidates, retrieve_index, first_child, next_sibling


@pytest.mark.parametrize("B,N,V,steps,seed", [
    (1, 1, 3, 1, 0),  # root only
    (1, 2, 2, 2, 1),
    (1, 12, 3, 12, 2),  # steps = N: the walk is never truncated
    (3, 20, 3, 5, 3),  # steps < depth: truncated paths
    (4, 33, 4, 33, 4),
    (2, 64, 2, 10, 5),  # V 2: many duplicate siblings
])
def test_verify_tree_greedy(interpreter, B, N, V, steps, seed):
    gen, parents, candidates, retrieve_index, first_child, next_sibling = _tree_batch(B, N, V, seed)
    target = fx.choices_along_paths(candidates, parents, gen, V)
    outs = []
    for fn in (sgl_kernel.verify_tree_greedy_cpu, None):
        predicts = torch.zeros(B * N, dtype=torch.int32)
        accept_index = torch.full((B, steps), -1, dtype=torch.int32)
        accept_token_num = torch.full((B,), -5, dtype=torch.int32)
        if fn is not None:  # keyword names as spec_tree.verify_tree_greedy_func passes them on CPU
            fn(predicts=predicts, accept_index=accept_index, accept_token_num=accept_token_num,
               candidates=candidates, retrive_index=retrieve_index, retrive_next_token=first_child,
               retrive_next_sibling=next_sibling, target_predict=target)
        else:
            spec_tree.verify_tree_greedy_triton(predicts, accept_index, accept_token_num, candidates, retrieve_index,
                                                first_child, next_sibling, target)
        outs.append((predicts, accept_index, accept_token_num))
    for name, got, want in zip(("predicts", "accept_index", "accept_token_num"), *outs):
        assert torch.equal(got, want), f"{name}:\n{got}\nvs Triton\n{want}"
    if N > 8:  # the case is not vacuous: some request accepted at least two drafts
        assert int(outs[0][2].max()) >= 2


@pytest.mark.parametrize("B,N,detached,seed", [(1, 1, 0.0, 0), (1, 5, 0.0, 1), (3, 17, 0.0, 2), (2, 40, 0.2, 3),
                                                (4, 64, 0.0, 4)])
def test_reconstruct_indices_from_tree_mask(interpreter, B, N, detached, seed):
    gen = torch.Generator().manual_seed(seed)
    parents = fx.random_parents(B, N, gen)
    parents[torch.rand(B, N, generator=gen) < detached] = -1  # a forest: extra roots get no sibling links
    tree_mask = build_ancestor_mask(parents).reshape(-1)
    verified = torch.randint(0, 500, (B,), generator=gen, dtype=torch.int64)
    outs = []
    for fn in (reconstruct_indices_from_tree_mask, reconstruct_tree.reconstruct_indices_from_tree_mask_triton):
        bufs = [torch.full((B * N,), -9, dtype=torch.int64) for _ in range(4)]
        fn(tree_mask, verified, *bufs, B, N)
        outs.append(bufs)
    for name, got, want in zip(("positions", "retrieve_index", "next_token", "next_sibling"), *outs):
        assert torch.equal(got, want), f"{name}:\n{got}\nvs Triton\n{want}"
    retrieve_index, first_child, next_sibling = build_retrieve_links(parents)
    assert torch.equal(outs[0][2].view(B, N), first_child) and torch.equal(outs[0][3].view(B, N), next_sibling)


@pytest.mark.parametrize("seed_dtype", [torch.uint64, torch.int64])
def test_murmur_hash32(interpreter, seed_dtype):
    high = 2 ** 64 - 1 if seed_dtype == torch.uint64 else 2 ** 63 - 1
    seeds = [0, 1, 12345, 2 ** 32 - 1, 2 ** 32, high]
    seed = torch.tensor(seeds, dtype=seed_dtype)
    positions = torch.tensor([0, 1, 7, 2 ** 31, 2 ** 32 + 3, 99], dtype=torch.uint64)  # high bits are dropped
    cols = torch.arange(1500, dtype=torch.int64)  # two 1024-wide column blocks
    got = torch.ops.sgl_kernel.murmur_hash32_cpu(seed, positions, cols)
    want = torch.empty((len(seeds), len(cols)), dtype=torch.uint32)
    murmur_hash.murmur_hash32_kernel[(len(seeds), 2)](seed, positions, cols, want, len(seeds), len(cols),
                                                      BLOCK_SIZE=1024)
    assert got.dtype == torch.uint32 and got.shape == want.shape
    assert torch.equal(got.to(torch.int64), want.to(torch.int64))
    assert len(set(got.to(torch.int64)[:, 0].tolist())) == len(seeds)  # the seed changes the hash


@pytest.mark.skipif(INTERPRETED or os.environ.get(fx.CHILD_ENV) == "1", reason="the cases run in this process")
def test_cases_under_the_interpreter():
    fx.rerun_under_interpreter(__file__, "not under_the_interpreter")


# ---------------------------------------------------------------- no Triton twin


def test_copy_all_layer_kv_cache_moves_rows_in_every_buffer():
    """Several layers (K and V, two dtypes, different row widths), overlapping source and target sets: every
    buffer gets buf[tgt] = old buf[src], i.e. all reads happen before any write, as SGLang's tiled kernel."""
    gen = torch.Generator().manual_seed(0)
    rows = 40
    buffers = [torch.randn(rows, 2, 8, generator=gen) for _ in range(3)]
    buffers += [torch.randn(rows, 4, 3, generator=gen).to(torch.bfloat16) for _ in range(2)]
    original = [b.clone() for b in buffers]
    data_ptrs = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.uint64)  # as MHATokenToKVPool builds them
    strides = torch.tensor([b.stride(0) * b.dtype.itemsize for b in buffers])
    src = torch.tensor([5, 6, 7, 8, 30, 0, 12], dtype=torch.int64)
    tgt = torch.tensor([6, 7, 8, 9, 5, 39, 12], dtype=torch.int64)  # a shifted chain: 6, 7, 8 are read and written;
    # 12 is already in place (skipped by the stand-in, same result)
    sgl_kernel.copy_all_layer_kv_cache_cpu(data_ptrs, strides, tgt, src)
    for got, old in zip(buffers, original):
        want = old.clone()
        want[tgt] = old[src]
        assert torch.equal(got, want)
        untouched = torch.ones(rows, dtype=torch.bool)
        untouched[tgt] = False
        assert torch.equal(got[untouched], old[untouched])
    sgl_kernel.copy_all_layer_kv_cache_cpu(data_ptrs, strides, tgt[:0], src[:0])  # nothing to move
    assert torch.equal(buffers[0][tgt], original[0][src])
    before = [b.clone() for b in buffers]
    sgl_kernel.copy_all_layer_kv_cache_cpu(data_ptrs, strides, src[-1:], src[-1:])  # every row in place
    assert all(torch.equal(b, o) for b, o in zip(buffers, before))


def test_served_ops_are_implemented_not_placeholders():
    """The ops the ledger lists as called on the CPU path are real functions of the package, not __getattr__'s
    NotImplementedError placeholders."""
    served = ["assign_req_to_token_pool_cpu", "assign_extend_cache_locs_cpu", "assign_draft_cache_locs_contiguous_cpu",
              "copy_all_layer_kv_cache_cpu", "fill_accept_out_cache_loc_cpu", "fill_bonus_tokens_cpu",
              "verify_tree_greedy_cpu"]
    assert [name for name in served if name not in vars(sgl_kernel)] == []
    assert "reconstruct_indices_from_tree_mask" in vars(sgl_kernel.speculative)
    assert hasattr(torch.ops.sgl_kernel, "murmur_hash32_cpu")


@pytest.mark.parametrize("name", ["build_tree_kernel_efficient_cpu", "rotate_input_ids_cpu", "some_future_op_cpu"])
def test_unsupported_ops_raise_naming_the_op(name):
    op = getattr(sgl_kernel, name)  # importable: SGLang imports such names at module load on CPU
    with pytest.raises(NotImplementedError, match=f"sgl_kernel.{name} has no CPU implementation"):
        op(torch.zeros(1))
    with pytest.raises(NotImplementedError, match="sgl_kernel.speculative.tree_op has no CPU implementation"):
        sgl_kernel.speculative.tree_op()
    with pytest.raises(AttributeError):
        sgl_kernel.__no_such_dunder__  # noqa: B018  (dunder lookups must not turn into ops)


# ---------------------------------------------------------------- inputs read as the GPU op reads them


def test_strided_accept_index_is_refused_where_triton_reads_the_wrong_elements(interpreter):
    """The budget ladder's case: accept_index is [bs, L + 1] and a budget N < L + 1 keeps N columns. The slice
    is a strided view; SGLang's Triton fill_accept_out_cache_loc reads raw memory, so it packs the wrong KV slots
    (KV corruption on a GPU). The stand-in refuses the view, so the CPU suite catches the bug class; the
    contiguous copy gives the stand-in and Triton the same, right, answer."""
    gen = torch.Generator().manual_seed(7)
    bs, steps, n = 4, 8, 4
    full, _ = _accept_index(bs, steps, n, gen)
    sliced = full[:, :n]
    assert not sliced.is_contiguous()
    out_cache_loc = torch.randperm(10_000, generator=gen)[: bs * n].to(torch.int64)
    size = bs * n
    triton_strided = torch.zeros(size, dtype=torch.int64)
    eagle.fill_accept_out_cache_loc[(size,)](sliced, out_cache_loc, triton_strided, next_power_of_2(size))
    right = out_cache_loc[sliced[sliced >= 0].long()]
    assert not torch.equal(triton_strided[: right.numel()], right)  # what a GPU would have written
    with pytest.raises(ValueError, match=r"fill_accept_out_cache_loc_cpu: accept_index is not contiguous.*"
                                         r"\.contiguous\(\)"):
        sgl_kernel.fill_accept_out_cache_loc_cpu(sliced, out_cache_loc, torch.zeros(size, dtype=torch.int64))
    got, want = torch.zeros(size, dtype=torch.int64), torch.zeros(size, dtype=torch.int64)
    sgl_kernel.fill_accept_out_cache_loc_cpu(sliced.contiguous(), out_cache_loc, got)
    eagle.fill_accept_out_cache_loc[(size,)](sliced.contiguous(), out_cache_loc, want, next_power_of_2(size))
    assert torch.equal(got, want) and torch.equal(got[: right.numel()], right)


def _strided(t: torch.Tensor) -> torch.Tensor:
    """The same values as `t` in a non-contiguous view (every element followed by a gap)."""
    view = torch.zeros(t.shape + (2,), dtype=t.dtype)[..., 0]
    view.copy_(t)
    return view


def _op_calls():
    """name -> (op, kwargs) with valid contiguous inputs for every op the stand-in serves."""
    gen = torch.Generator().manual_seed(0)
    rpi, start, end, r2t = _batch([1, 4], [3, 2], gen)
    B, N = 2, 6
    _, _, candidates, retrieve_index, first_child, next_sibling = _tree_batch(B, N, 3, 0)
    accept_index, accept_lens = _accept_index(B, 3, N, gen)
    return {
        "assign_req_to_token_pool_cpu": (sgl_kernel.assign_req_to_token_pool_cpu, dict(
            req_pool_indices=rpi, req_to_token=r2t, start_offset=start, end_offset=end,
            out_cache_loc=torch.arange(5, dtype=torch.int64), pool_len=r2t.shape[1])),
        "assign_extend_cache_locs_cpu": (sgl_kernel.assign_extend_cache_locs_cpu, dict(
            req_pool_indices=rpi, req_to_token=r2t, start_offset=start, end_offset=end,
            out_cache_loc=torch.zeros(5, dtype=torch.int64), pool_len=r2t.shape[1])),
        "fill_accept_out_cache_loc_cpu": (sgl_kernel.fill_accept_out_cache_loc_cpu, dict(
            accept_index=accept_index, out_cache_loc=torch.arange(B * N, dtype=torch.int64),
            accept_out_cache_loc=torch.zeros(accept_index.numel(), dtype=torch.int64))),
        "fill_bonus_tokens_cpu": (sgl_kernel.fill_bonus_tokens_cpu, dict(
            accept_tokens=torch.arange(B * 3, dtype=torch.int32).view(B, 3), accept_lens=accept_lens,
            bonus_tokens=torch.zeros(B, dtype=torch.int32), accept_stride=3)),
        "verify_tree_greedy_cpu": (sgl_kernel.verify_tree_greedy_cpu, dict(
            predicts=torch.zeros(B * N, dtype=torch.int32), accept_index=torch.full((B, 3), -1, dtype=torch.int32),
            accept_token_num=torch.zeros(B, dtype=torch.int32), candidates=candidates, retrive_index=retrieve_index,
            retrive_next_token=first_child, retrive_next_sibling=next_sibling, target_predict=candidates.clone())),
    }


CALLS = [(op, arg) for op, (_, kwargs) in _op_calls().items() for arg, v in kwargs.items()
         if isinstance(v, torch.Tensor) and v.numel() > 1]


@pytest.mark.parametrize("op,arg", CALLS)
def test_every_tensor_argument_must_be_contiguous(op, arg):
    fn, kwargs = _op_calls()[op]
    fn(**kwargs)  # the contiguous call is served
    fn, kwargs = _op_calls()[op]
    kwargs[arg] = _strided(kwargs[arg])
    assert torch.equal(kwargs[arg], _op_calls()[op][1][arg]) and not kwargs[arg].is_contiguous()
    with pytest.raises(ValueError, match=rf"sgl_kernel.{op}: {arg} is not contiguous"):
        fn(**kwargs)


@pytest.mark.parametrize("arg,dtype", [("accept_index", torch.int64), ("predicts", torch.int64),
                                       ("candidates", torch.int32), ("target_predict", torch.int32)])
def test_verify_tree_greedy_checks_dtypes_as_the_cuda_op(arg, dtype):
    """The CUDA op's TensorMatchers fix int32 outputs and int64 tree inputs (jit/csrc/speculative/tree.cuh)."""
    fn, kwargs = _op_calls()["verify_tree_greedy_cpu"]
    kwargs[arg] = kwargs[arg].to(dtype)
    with pytest.raises(ValueError, match=rf"verify_tree_greedy_cpu: {arg} is {dtype}, the GPU op expects"):
        fn(**kwargs)
