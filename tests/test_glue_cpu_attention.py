"""CPU TARGET_VERIFY attention (glue/cpu_attention.py, ledger H5) on real SGLang objects (sglang_fixtures.VerifyCase:
a RadixAttention layer, an MHATokenToKVPool and a ReqToTokenPool on CPU, a TorchNativeAttnBackend, a TARGET_VERIFY
ForwardBatch with an EagleVerifyInput). Two oracles over 1-3 requests with different prefix lengths (0 included),
GQA and MHA, value width != key width:
  * SGLang's own Triton `extend_attention_fwd` under TRITON_INTERPRET=1, called as the triton backend does in
    TARGET_VERIFY (prefix keys through kv_indices, the n draft rows as the extend part, FULL custom mask +
    mask_indptr);
  * an independent float64 per-request softmax over the mask contract of shared docs dflash-on-cpu.md Q2.4.
Cases: a FULL tree mask from random parents, no mask on DECODER (causal) and ENCODER_ONLY (bidirectional)
layers, a sliding window; the n rows' KV lands at out_cache_loc; other forward modes reach the original.
The hook as SGLang applies it (through TorchNativeAttnBackend.forward) is checked in test_glue_registration.py.
"""
import importlib.util
import os

import pytest
import torch

if importlib.util.find_spec("sglang") is None:
    pytest.skip("sglang is not installed (run scripts/setup.sh)", allow_module_level=True)

import sglang_fixtures as fx  # noqa: E402

MODULES = fx.import_interpreted()  # first: before anything else imports triton
extend_attention = MODULES["sglang.kernels.ops.attention.extend_attention"]

from conftest import tol  # noqa: E402
from jetspec_sglang.glue.cpu_attention import forward_extend_target_verify  # noqa: E402
from sglang.srt.layers.radix_attention import AttentionType  # noqa: E402
from sglang.srt.model_executor.forward_batch_info import ForwardMode  # noqa: E402

pytestmark = pytest.mark.sglang

INTERPRETED = fx.all_interpreted(extend_attention._fwd_kernel)
LAYER_ID = fx.VerifyCase.LAYER_ID

CASES = {  # name -> VerifyCase kwargs
    "tree_3_requests": dict(prefix_lens=[5, 0, 12], n=6, tree=True),
    "tree_bs1_no_prefix_mha": dict(prefix_lens=[0], n=7, H=2, G=2, tree=True, seed=1),
    "causal_chain": dict(prefix_lens=[9, 3], n=5, seed=2),
    "bidirectional_block": dict(prefix_lens=[4, 0, 7], n=4, Ev=6, attn_type=AttentionType.ENCODER_ONLY, seed=3),
    "sliding_window": dict(prefix_lens=[11, 2], n=5, window=4, seed=4),
    "sliding_window_tree": dict(prefix_lens=[10, 6], n=6, window=3, tree=True, seed=5),
    # the compact [bs, n, n] tree layout the worker passes on CPU (oracles: the same tree as a FULL mask)
    "tree_compact_4_requests": dict(prefix_lens=[5, 0, 12, 1], n=6, tree=True, seed=10, compact=True),
    "tree_compact_bs1_mha": dict(prefix_lens=[9], n=8, H=2, G=2, tree=True, seed=11, compact=True),
    "sliding_window_tree_compact": dict(prefix_lens=[10, 6], n=6, window=3, tree=True, seed=12, compact=True),
}


def run_hook(case, layer=None, forward_batch=None):
    def original(*args, **kwargs):
        raise AssertionError("TARGET_VERIFY must not reach the original forward_extend")

    return forward_extend_target_verify(original, case.backend, case.q, case.k, case.v, layer or case.layer,
                                        forward_batch or case.forward_batch())


def triton_attention(case, layer) -> torch.Tensor:
    """SGLang's Triton extend attention as triton_backend calls it for TARGET_VERIFY (triton_backend.py:1007-1057,
    1887-1914); reads only the prefix from the pool, so it runs before the hook writes the n rows' KV."""
    bs, n = len(case.rows), case.n
    causal = layer.attn_type != AttentionType.ENCODER_ONLY
    o = torch.zeros(bs * n, case.H, case.Ev)
    zero = torch.zeros(1, dtype=torch.int64)
    extend_attention.extend_attention_fwd(
        case.q.view(-1, case.H, case.E), case.k, case.v, o,
        case.kv_pool.get_key_buffer(layer.layer_id), case.kv_pool.get_value_buffer(layer.layer_id),
        torch.arange(0, (bs + 1) * n, n, dtype=torch.int32),  # qo_indptr
        torch.cat([zero, torch.cumsum(case.prefix, 0)]).to(torch.int32),  # kv_indptr over the prefixes
        torch.cat([sl[:s] for sl, s in zip(case.slots, case.prefix.tolist())]).to(torch.int64),  # kv_indices
        case.custom_mask, causal,
        torch.cat([zero, torch.cumsum(n * (case.prefix + n), 0)]),  # mask_indptr
        n, 1.0, 1.0, sm_scale=layer.scaling,
        sliding_window_size=layer.sliding_window_size if causal else -1,
        window_kv_offsets=torch.zeros(bs, dtype=torch.int32) if layer.sliding_window_size > 0 else None,
    )
    return o.view(bs * n, -1)


@pytest.mark.parametrize("name", list(CASES))
def test_verify_attention_matches_naive_softmax(name):
    case = fx.VerifyCase(**CASES[name])
    o = run_hook(case)
    assert o.shape == (case.q.shape[0], case.H * case.Ev) and o.dtype == torch.float32
    torch.testing.assert_close(o, case.naive_attention(case.layer), **tol(torch.float32))


@pytest.mark.parametrize("name", list(CASES))
def test_verify_attention_matches_sglang_triton(name, monkeypatch):
    if not INTERPRETED:
        pytest.skip("SGLang's kernels were imported compiled in this process; "
                    "test_triton_cases_under_the_interpreter reruns them with TRITON_INTERPRET=1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    case = fx.VerifyCase(**CASES[name])
    want = triton_attention(case, case.layer)
    torch.testing.assert_close(run_hook(case), want, **tol(torch.float32))


@pytest.mark.skipif(INTERPRETED or os.environ.get(fx.CHILD_ENV) == "1", reason="the cases run in this process")
def test_triton_cases_under_the_interpreter():
    fx.rerun_under_interpreter(__file__, "matches_sglang_triton")


def test_kv_of_the_draft_rows_is_written_at_out_cache_loc():
    case = fx.VerifyCase(prefix_lens=[3, 0, 8], n=4, tree=True, seed=6)
    other_layer_k = case.kv_pool.get_key_buffer(0).clone()
    before_k = case.kv_pool.get_key_buffer(LAYER_ID).clone()
    run_hook(case)
    k_buf, v_buf = case.kv_pool.get_key_buffer(LAYER_ID), case.kv_pool.get_value_buffer(LAYER_ID)
    assert torch.equal(k_buf[case.out_cache_loc], case.k)
    assert torch.equal(v_buf[case.out_cache_loc], case.v)
    untouched = torch.ones(k_buf.shape[0], dtype=torch.bool)
    untouched[case.out_cache_loc] = False
    assert torch.equal(k_buf[untouched], before_k[untouched])
    assert torch.equal(case.kv_pool.get_key_buffer(0), other_layer_k)  # only this layer's buffer


def test_layers_with_different_types_share_one_forward_batch():
    """Masks are cached on the ForwardBatch per (causal, window): a causal layer, then a bidirectional one, then a
    windowed one, all in the same forward, each gets its own mask."""
    case = fx.VerifyCase(prefix_lens=[6, 2], n=5, seed=7)
    forward_batch = case.forward_batch()
    for attn_type, window in ((AttentionType.DECODER, -1), (AttentionType.ENCODER_ONLY, -1),
                              (AttentionType.DECODER, 2), (AttentionType.DECODER, -1)):
        layer = case.make_layer(attn_type, window)
        o = run_hook(case, layer, forward_batch)
        torch.testing.assert_close(o, case.naive_attention(layer), **tol(torch.float32))


@pytest.mark.parametrize("mode", [ForwardMode.EXTEND, ForwardMode.DECODE, ForwardMode.DRAFT_EXTEND_V2])
def test_other_forward_modes_go_to_the_original(mode):
    case = fx.VerifyCase(prefix_lens=[2], n=3, seed=8)
    forward_batch = case.forward_batch(mode)
    before = case.kv_pool.get_key_buffer(LAYER_ID).clone()
    calls = []
    sentinel = torch.ones(1)

    def original(*args, **kwargs):
        calls.append((args, kwargs))
        return sentinel

    out = forward_extend_target_verify(original, case.backend, case.q, case.k, case.v, case.layer, forward_batch,
                                       False, "extra", flag=1)
    assert out is sentinel
    assert len(calls) == 1
    args, kwargs = calls[0]
    assert args[0] is case.backend and args[1] is case.q and args[4] is case.layer and args[5] is forward_batch
    assert args[6:] == (False, "extra") and kwargs == {"flag": 1}
    assert torch.equal(case.kv_pool.get_key_buffer(LAYER_ID), before)  # the hook itself wrote nothing


def test_cross_attention_is_refused():
    case = fx.VerifyCase(prefix_lens=[2], n=3, seed=9)
    layer = case.make_layer(AttentionType.DECODER, is_cross_attention=True)
    with pytest.raises(NotImplementedError, match="cross-attention"):
        run_hook(case, layer)
