"""Target taps: hooks == HF output_hidden_states for non-final layers; the final-layer tap is pre-norm; cached
forwards tap the new rows only; order and errors."""
import pytest
import torch
from conftest import tol
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from jetspec_sglang.taps import TargetTaps, decoder_layers, forward_with_taps, taps_from_hidden_states

F32 = tol(torch.float32)


def tiny_target(family: str):
    torch.manual_seed(0)
    if family == "qwen3":
        cfg = Qwen3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=16, vocab_size=256)
        return Qwen3ForCausalLM(cfg).eval()
    cfg = LlamaConfig(hidden_size=96, intermediate_size=160, num_hidden_layers=3, num_attention_heads=3,
                      num_key_value_heads=1, head_dim=32, vocab_size=320, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_taps_match_output_hidden_states_for_non_final_layers(family):
    model = tiny_target(family)
    ids_BT = torch.randint(0, 200, (2, 7))
    with torch.no_grad():
        out, taps_BTF = forward_with_taps(model, [1, 0], ids_BT, output_hidden_states=True)
    hs = out.hidden_states
    assert taps_BTF.shape == (2, 7, 2 * model.config.hidden_size)
    assert torch.equal(taps_BTF, torch.cat([hs[2], hs[1]], dim=-1))  # config order, layer L = hidden_states[L + 1]
    assert torch.equal(taps_from_hidden_states(hs, [1, 0]), taps_BTF)


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_final_layer_tap_is_pre_norm(family):
    model = tiny_target(family)
    last = model.config.num_hidden_layers - 1
    ids_BT = torch.randint(0, 200, (1, 6))
    with torch.no_grad():
        out, tap_BTM = forward_with_taps(model, [last], ids_BT, output_hidden_states=True)
        normed_BTM = model.model.norm(tap_BTM)
        torch.testing.assert_close(model.lm_head(normed_BTM), out.logits, **F32)  # logits = lm_head(norm(tap))
    assert (tap_BTM - normed_BTM).abs().max() > 1e-2  # so the tap itself is not normed
    with pytest.raises(ValueError, match="final layer"):
        taps_from_hidden_states(out.hidden_states, [last])


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_cached_forward_taps_only_new_rows(family):
    model = tiny_target(family)
    ids_BT = torch.randint(0, 200, (1, 9))
    ids = [0, model.config.num_hidden_layers - 1]
    with torch.no_grad():
        _, full_BTF = forward_with_taps(model, ids, ids_BT)
        cache = DynamicCache(config=model.config)
        out, first_BTF = forward_with_taps(model, ids, ids_BT[:, :6], past_key_values=cache, use_cache=True)
        _, rest_BTF = forward_with_taps(model, ids, ids_BT[:, 6:], past_key_values=out.past_key_values, use_cache=True)
    assert rest_BTF.shape[1] == 3
    torch.testing.assert_close(torch.cat([first_BTF, rest_BTF], dim=1), full_BTF, **F32)


def test_hooks_are_removed_and_errors_name_the_input():
    model = tiny_target("qwen3")
    layers = decoder_layers(model)
    with TargetTaps(model, [2, 2]) as taps:  # a repeated id is tapped twice, like the config says
        model(torch.tensor([[1, 2, 3]]))
        assert taps.pop().shape == (1, 3, 128)
        with pytest.raises(RuntimeError, match="run the model forward"):
            taps.pop()
    assert all(len(layer._forward_hooks) == 0 for layer in layers)
    with pytest.raises(ValueError, match=r"bad ids \[4\]"):
        TargetTaps(model, [0, 4])
    with pytest.raises(TypeError, match="no `.model.layers`"):
        decoder_layers(torch.nn.Linear(2, 2))
