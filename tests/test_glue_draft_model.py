"""JetSpecDraftModel (glue/draft_model.py, ledger H1): `dflash_config.causal_head` decides the draft attention type.

`force_attention_type` on real transformers Qwen3Configs loaded from saved head checkpoints (with and without
`is_causal` / `layer_types`; a contradicting `is_causal` and sliding layers are refused). Then the real models:
SGLang's DFlashDraftModel and JetSpecDraftModel instantiated on CPU under a published runtime context
(`get_context().override_server_args`, SGLang's own test hook). That needs SGLang's CPU switch
(SGLANG_USE_CPU_ENGINE=1, read when sglang is imported: RoPE picks its CPU path then), so those cases run in a
subprocess with it set unless this process already has it.
"""
import importlib.util
import json
import os

import pytest

if importlib.util.find_spec("sglang") is None:
    pytest.skip("sglang is not installed (run scripts/setup.sh)", allow_module_level=True)

import sglang_fixtures as fx  # noqa: E402

fx.import_interpreted()  # keep SGLang's Triton kernels interpretable for the other test files of this run

import torch  # noqa: E402
from transformers import Qwen3Config  # noqa: E402

from jetspec_sglang.glue.draft_model import force_attention_type  # noqa: E402
from sglang.srt.layers.radix_attention import AttentionType  # noqa: E402
from sglang.srt.utils import is_cpu  # noqa: E402

pytestmark = pytest.mark.sglang

CPU_ENGINE = is_cpu()  # SGLang imported with SGLANG_USE_CPU_ENGINE=1 in this process


def head_config(tmp_path, *, causal_head=True, drop=(), **overrides) -> Qwen3Config:
    """A saved head's config.json, edited (keys dropped / overridden), loaded as transformers loads it."""
    folder = fx.make_head(tmp_path / "head", causal_head=causal_head, num_layers=2)
    raw = json.loads((folder / "config.json").read_text())
    for key in drop:
        raw.pop(key, None)
    raw.update(overrides)
    (folder / "config.json").write_text(json.dumps(raw))
    return Qwen3Config.from_pretrained(folder)


@pytest.mark.parametrize("causal_head", [True, False])
@pytest.mark.parametrize("drop", [(), ("is_causal",), ("is_causal", "layer_types")])
def test_force_attention_type_follows_causal_head(tmp_path, causal_head, drop):
    config = head_config(tmp_path, causal_head=causal_head, drop=drop)
    if causal_head and not drop:
        assert config.is_causal is True  # the saved head already carries it (draft_head_config.to_dict)
    assert force_attention_type(config) is causal_head
    assert config.is_causal is causal_head and config.get_text_config().is_causal is causal_head
    assert config.layer_types == ["full_attention", "full_attention"]


@pytest.mark.parametrize("causal_head", [True, False])
def test_force_attention_type_fills_missing_layer_types(tmp_path, causal_head):
    """A config class that does not fill layer_types itself (e.g. Llama's): one full-attention entry per layer."""
    config = head_config(tmp_path, causal_head=causal_head, drop=("is_causal",))
    config.layer_types = None
    assert force_attention_type(config) is causal_head
    assert config.layer_types == ["full_attention", "full_attention"] and config.is_causal is causal_head


@pytest.mark.parametrize("causal_head,is_causal", [(True, False), (False, True)])
def test_contradicting_is_causal_is_refused(tmp_path, causal_head, is_causal):
    config = head_config(tmp_path, causal_head=causal_head, is_causal=is_causal)
    with pytest.raises(ValueError, match=f"is_causal={is_causal} contradicts dflash_config.causal_head={causal_head}"):
        force_attention_type(config)


def test_sliding_layers_are_refused(tmp_path):
    config = head_config(tmp_path, drop=("is_causal",))
    config.layer_types = ["full_attention", "sliding_attention"]
    config.sliding_window = 8
    with pytest.raises(ValueError, match="layer_types=.*sliding_attention.*full-attention head layers only"):
        force_attention_type(config)


def test_a_head_without_dflash_config_is_bidirectional(tmp_path):
    """No dflash_config at all: causal_head defaults to False, as DFLASH heads are bidirectional."""
    config = head_config(tmp_path, causal_head=False, drop=("dflash_config",))
    assert force_attention_type(config) is False and config.is_causal is False


# ---------------------------------------------------------------- real models (SGLang's CPU engine)


def build_models(config_factory):
    """(DFlashDraftModel, JetSpecDraftModel) for two fresh copies of one config, under a published context."""
    from sglang.srt.models.dflash import DFlashDraftModel
    from sglang.srt.runtime_context import get_context

    from jetspec_sglang.glue.draft_model import JetSpecDraftModel

    with get_context().override_server_args(device="cpu"):
        return DFlashDraftModel(config_factory()), JetSpecDraftModel(config_factory())


def attention_types(model) -> list:
    return [layer.self_attn.attn.attn_type for layer in model.layers]


@pytest.fixture
def cpu_engine():
    if not CPU_ENGINE:
        pytest.skip("needs SGLANG_USE_CPU_ENGINE=1 when sglang is imported; "
                    "test_models_under_the_cpu_engine reruns these cases in a subprocess")


@pytest.mark.parametrize("drop", [("is_causal",), ()])
def test_cpu_engine_causal_head_gets_decoder_layers(tmp_path, cpu_engine, drop):
    """Official-format causal head (no is_causal): SGLang's own class runs it bidirectionally - the pitfall -,
    JetSpecDraftModel makes every layer DECODER (block-causal in TARGET_VERIFY)."""
    dflash, jetspec = build_models(lambda: head_config(tmp_path, causal_head=True, drop=drop))
    assert attention_types(jetspec) == [AttentionType.DECODER] * 2
    if drop:
        assert attention_types(dflash) == [AttentionType.ENCODER_ONLY] * 2
    assert jetspec.causal_head is True
    assert not any(layer.self_attn.use_table_qk_norm_rope for layer in jetspec.layers)  # Triton-only path off


def test_cpu_engine_bidirectional_head_gets_encoder_only_layers(tmp_path, cpu_engine):
    dflash, jetspec = build_models(lambda: head_config(tmp_path, causal_head=False))
    assert attention_types(jetspec) == [AttentionType.ENCODER_ONLY] * 2
    assert attention_types(dflash) == [AttentionType.ENCODER_ONLY] * 2
    assert jetspec.causal_head is False


def test_cpu_engine_loads_the_head_checkpoint(tmp_path, cpu_engine):
    """The checkpoint format is DFlashDraftModel's: its loader fills JetSpecDraftModel from the saved head
    (q/k/v stacked into qkv_proj, gate/up into gate_up_proj)."""
    from safetensors.torch import load_file

    _, jetspec = build_models(lambda: head_config(tmp_path, causal_head=True))
    weights = load_file(str(tmp_path / "head" / "model.safetensors"))
    jetspec.load_weights(weights.items())
    params = dict(jetspec.named_parameters())
    attn = "layers.1.self_attn."
    qkv = torch.cat([weights[attn + "q_proj.weight"], weights[attn + "k_proj.weight"], weights[attn + "v_proj.weight"]])
    assert torch.equal(params[attn + "qkv_proj.weight"], qkv)
    assert torch.equal(params["fc.weight"], weights["fc.weight"])


@pytest.mark.parametrize("head_dtype,target_dtype", [(torch.bfloat16, torch.float16), (torch.float32, torch.bfloat16),
                                                      (torch.float16, torch.float32)])
def test_cpu_engine_projects_target_hidden_of_another_dtype(tmp_path, cpu_engine, head_dtype, target_dtype):
    """A head built in one dtype receives the target's hidden states in another (a config override can split
    them): SGLang's DFlashDraftModel fails in fc (the reported `Half != BFloat16`), JetSpecDraftModel casts and
    gives the same result as projecting states already in its own dtype."""
    from sglang.srt.model_loader.utils import set_default_torch_dtype

    with set_default_torch_dtype(head_dtype):
        dflash, jetspec = build_models(lambda: head_config(tmp_path, causal_head=True))
    hidden = torch.randn(5, jetspec.fc.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="dtype"):
            dflash.project_target_hidden(hidden.to(target_dtype))
        out = jetspec.project_target_hidden(hidden.to(target_dtype))
        assert out.dtype == head_dtype and out.shape == (5, jetspec.config.hidden_size)
        assert torch.equal(out, jetspec.project_target_hidden(hidden.to(target_dtype).to(head_dtype)))


@pytest.mark.skipif(CPU_ENGINE or os.environ.get(fx.CHILD_ENV) == "1", reason="the cases run in this process")
def test_models_under_the_cpu_engine():
    fx.rerun_in_subprocess(__file__, "test_cpu_engine", SGLANG_USE_CPU_ENGINE="1")
