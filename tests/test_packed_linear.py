"""Packed CPU weights (jetspec_sglang/packed_linear.py, glue/cpu_packed.py): bit-identical to the plain products
they replace, for every row count a server produces; refused where they would not be (fp32); the SGLang hooks take
the packed path only for the weight they were packed from. The patched classes in a fresh SGLang process are
tests/test_glue_registration.py::test_applied_packed_linear; live servers are tests/test_server_dtype.py.
"""
import importlib.util
from types import SimpleNamespace

import pytest
import torch

from jetspec_sglang import packed_linear
from jetspec_sglang.config import ConfigError, cpu_packed_weights
from jetspec_sglang.draft_topk import DraftProjection, topk_logprobs

BF16 = packed_linear.packable_dtype(torch.bfloat16)
needs_bf16 = pytest.mark.skipif(not BF16, reason="this CPU's oneDNN has no bf16 path")


@needs_bf16
@pytest.mark.parametrize("rows", [0, 1, 7, 8, 16, 33, 300])
def test_packed_linear_is_bit_identical_to_f_linear(rows):
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(384, 96, generator=gen).to(torch.bfloat16)
    bias = torch.randn(384, generator=gen).to(torch.bfloat16)
    x = torch.randn(rows, 96, generator=gen).to(torch.bfloat16)
    packed = packed_linear.pack_weight(weight)
    assert torch.equal(packed_linear.packed_linear(x, packed), torch.nn.functional.linear(x, weight))
    assert torch.equal(packed_linear.packed_linear(x, packed, bias), torch.nn.functional.linear(x, weight, bias))
    assert torch.equal(packed_linear.packed_linear(x, packed), torch.matmul(x, weight.T))  # the LM head's spelling


@needs_bf16
def test_packed_linear_takes_batched_and_strided_inputs():
    weight = torch.randn(64, 32).to(torch.bfloat16)
    packed = packed_linear.pack_weight(weight)
    x_BTI = torch.randn(2, 5, 32).to(torch.bfloat16)
    assert torch.equal(packed_linear.packed_linear(x_BTI, packed), torch.nn.functional.linear(x_BTI, weight))
    strided = torch.randn(5, 80).to(torch.bfloat16)[:, 8:40]
    assert torch.equal(packed_linear.packed_linear(strided, packed), torch.nn.functional.linear(strided, weight))


def test_fp32_and_bad_shapes_are_not_packed():
    assert not packed_linear.packable_dtype(torch.float32)
    with pytest.raises(ValueError, match=r"pack_weight: a 2-D CPU weight of a packable dtype is needed, got shape "
                                         r"\(4, 3\) torch.float32"):
        packed_linear.pack_weight(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"got shape \(4,\)"):
        packed_linear.pack_weight(torch.zeros(4, dtype=torch.bfloat16))


def test_setting_is_read_and_checked():
    assert cpu_packed_weights({}) == "auto"
    assert cpu_packed_weights({"JETSPEC_CPU_PACKED_WEIGHTS": " On "}) == "on"
    assert cpu_packed_weights({"JETSPEC_CPU_PACKED_WEIGHTS": "off"}) == "off"
    with pytest.raises(ConfigError, match=r"JETSPEC_CPU_PACKED_WEIGHTS='yes' is not one of \('auto', 'on', 'off'\)"):
        cpu_packed_weights({"JETSPEC_CPU_PACKED_WEIGHTS": "yes"})


@needs_bf16
def test_packed_draft_projection_gives_the_same_top_k():
    gen = torch.Generator().manual_seed(0)
    weight_VM = torch.randn(5000, 64, generator=gen).to(torch.bfloat16)
    hidden_TM = torch.randn(7, 64, generator=gen).to(torch.bfloat16)
    ids_S = torch.randperm(5000, generator=gen)[:1200]
    for ids in (None, ids_S):
        plain = DraftProjection.build(weight_VM, "auto", rows=7, ids_S=ids)
        packed = DraftProjection.build(weight_VM, "auto", rows=7, ids_S=ids, pack=True)
        assert plain.packed_VM is None and packed.packed_VM is not None and packed.reason.endswith(
            "packed" if ids is None else "vocabulary rows")
        for got, want in zip(packed(hidden_TM, 4), plain(hidden_TM, 4)):
            assert torch.equal(got, want)
    logprobs, ids = topk_logprobs(hidden_TM, weight_VM, 3, packed_VM=packed_linear.pack_weight(weight_VM))
    assert torch.equal(ids, topk_logprobs(hidden_TM, weight_VM, 3)[1])
    fp32 = DraftProjection.build(weight_VM.float(), "model", rows=7, pack=True)
    assert fp32.packed_VM is None  # an fp32 projection kept as the model's: never packed


# ---------------------------------------------------------------- the SGLang hooks, called as SGLang calls them

sglang_only = pytest.mark.skipif(importlib.util.find_spec("sglang") is None, reason="sglang is not installed")


@sglang_only
@needs_bf16
def test_hooks_use_the_packed_copy_only_for_its_own_weight():
    from jetspec_sglang.glue import cpu_packed
    from sglang.srt.layers.logits_processor import LogitsProcessor
    from sglang.srt.layers.quantization.unquant import UnquantizedLinearMethod

    method = UnquantizedLinearMethod()
    lm_head = torch.nn.Module()
    lm_head.weight = torch.nn.Parameter(torch.randn(3000, 64).to(torch.bfloat16), requires_grad=False)
    model = torch.nn.Module()
    model.lm_head = lm_head
    assert cpu_packed.pack_model(model) == (1, 3000 * 64 * 2)
    assert cpu_packed.pack_model(model) == (0, 0)  # idempotent (a draft sharing its target's head)
    assert "JETSPEC_CPU_PACKED_WEIGHTS=off" in lm_head._derived_weight_cache_error  # SGLang refuses online updates
    hidden = torch.randn(8, 64).to(torch.bfloat16)
    processor = SimpleNamespace(use_fp32_lm_head=False, use_fp32_lm_head_output=False, rl_on_policy_target=None)
    original = LogitsProcessor._compute_lm_head
    want = original(processor, hidden, lm_head)
    assert torch.equal(cpu_packed.compute_lm_head(original, processor, hidden, lm_head), want)
    assert torch.equal(cpu_packed.compute_lm_head(original, processor, hidden.float(), lm_head), want)
    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    fp32_head = SimpleNamespace(**{**vars(processor), "use_fp32_lm_head": True})
    assert cpu_packed.compute_lm_head(spy, fp32_head, hidden, lm_head).dtype == torch.float32 and calls
    x = torch.randn(4, 64).to(torch.bfloat16)
    assert torch.equal(cpu_packed.linear_apply(UnquantizedLinearMethod.apply, method, lm_head, x),
                       torch.nn.functional.linear(x, lm_head.weight))
    lm_head.weight = torch.nn.Parameter(torch.randn(3000, 64).to(torch.bfloat16), requires_grad=False)
    calls.clear()
    got = cpu_packed.linear_apply(lambda *a: calls.append(a) or UnquantizedLinearMethod.apply(*a), method, lm_head, x)
    assert calls and torch.equal(got, torch.nn.functional.linear(x, lm_head.weight))  # a replaced weight: original


@sglang_only
@needs_bf16
def test_plain_nn_linear_instances_read_their_packed_copy():
    """A DFlash head's fc is a torch.nn.Linear (no SGLang quant method): its instance forward is switched to the
    packed product; other nn.Linear instances and the class are untouched."""
    from jetspec_sglang.glue import cpu_packed

    model = torch.nn.Module()
    model.fc = torch.nn.Linear(96, 40, bias=True).to(torch.bfloat16)
    other = torch.nn.Linear(96, 40).to(torch.bfloat16)
    x = torch.randn(8, 96).to(torch.bfloat16)
    want = torch.nn.functional.linear(x, model.fc.weight, model.fc.bias)
    assert cpu_packed.pack_model(model) == (1, 96 * 40 * 2)
    assert "forward" in vars(model.fc) and "forward" not in vars(other)
    assert getattr(model.fc, cpu_packed.PACKED_ATTR)[1] is model.fc.weight
    assert torch.equal(model.fc(x), want)
    assert torch.equal(model.fc(x.float().to(torch.bfloat16)[None])[0], want)  # 3-D input
    with pytest.raises(RuntimeError):  # an fp32 input goes to F.linear, which refuses the dtype mix as before
        model.fc(x.float())


@sglang_only
@needs_bf16
def test_load_hook_packs_per_setting_and_memory(monkeypatch, caplog):
    """pack_after_load decides from JETSPEC_CPU_PACKED_WEIGHTS, the algorithm, the dtype and the free memory."""
    from jetspec_sglang.glue import cpu_packed

    def runner(algo="JETSPEC", dtype=torch.bfloat16, device="cpu"):
        model = torch.nn.Module()
        model.fc = torch.nn.Linear(64, 32, bias=False).to(dtype)
        return SimpleNamespace(device=device, spec_algorithm=algo, model=model,
                               model_config=SimpleNamespace(dtype=dtype))

    def packed(r):
        cpu_packed.pack_after_load(None, r)
        return cpu_packed.packed_stats(r)

    caplog.set_level("INFO")
    monkeypatch.delenv("JETSPEC_CPU_PACKED_WEIGHTS", raising=False)
    assert packed(runner()) == (1, 64 * 32 * 2)  # auto: a JETSPEC server
    assert packed(runner(algo=None)) is None and "not a JETSPEC server" in caplog.text  # auto: plain stays stock
    assert packed(runner(dtype=torch.float32)) is None and "torch.float32 is not packed (bf16 only" in caplog.text
    assert packed(runner(device="cuda")) is None
    monkeypatch.setenv("JETSPEC_CPU_PACKED_WEIGHTS", "on")
    assert packed(runner(algo=None)) == (1, 64 * 32 * 2)
    monkeypatch.setattr(cpu_packed, "MAX_MEMORY_SHARE", 0.0)
    assert packed(runner()) is None and "would take 0 MB of" in caplog.text
    monkeypatch.setenv("JETSPEC_CPU_PACKED_WEIGHTS", "off")
    monkeypatch.setattr(cpu_packed, "MAX_MEMORY_SHARE", 0.5)
    assert packed(runner()) is None and "JETSPEC_CPU_PACKED_WEIGHTS=off" in caplog.text
    monkeypatch.setenv("JETSPEC_CPU_PACKED_WEIGHTS", "maybe")
    with pytest.raises(ConfigError, match="JETSPEC_CPU_PACKED_WEIGHTS='maybe'"):
        packed(runner())
