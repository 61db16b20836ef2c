"""DraftHead: fast paths == the naive twin, cache == recomputation, many-block training == per-block reference,
official checkpoint layout (hand-written files load; save/load round-trips) and every load error."""
import json

import pytest
import torch
from conftest import tol
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM, Qwen3Model

from jetspec_sglang.draft_head import (DraftHead, block_positions, build_block_mask, draft_hidden_ref,
                                       init_draft_head, load_draft_head, make_block_ids)
from jetspec_sglang.draft_head_config import (DraftHeadConfig, DraftHeadError, default_target_layer_ids,
                                              make_draft_head_config)

F32 = tol(torch.float32)
F64 = tol(torch.float64)
MASK_ID = 250
# The official key names, written out here (not taken from the module) so the test pins the checkpoint format.
OFFICIAL_LAYER_KEYS = [
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "self_attn.q_norm.weight", "self_attn.k_norm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
    "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight",
]


def qwen3_target_config(**kw) -> Qwen3Config:
    args = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, vocab_size=256, rope_theta=1e6)
    return Qwen3Config(**{**args, **kw})


def llama_target_config() -> LlamaConfig:  # SmolLM2's geometry (9 heads / 3 kv heads, head_dim 64), shrunk
    return LlamaConfig(hidden_size=96, intermediate_size=160, num_hidden_layers=3, num_attention_heads=3,
                       num_key_value_heads=1, head_dim=32, vocab_size=320, rope_theta=1e5, tie_word_embeddings=True)


def make_head(causal: bool = True, seed: int = 0, **kw) -> DraftHead:
    args = dict(mask_token_id=MASK_ID, num_layers=2, block_size=5, target_layer_ids=[0, 2, 3])
    cfg = make_draft_head_config(qwen3_target_config(), causal_head=causal, **{**args, **kw})
    head = init_draft_head(cfg, seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-trivial norm weights, so a misplaced norm shows up
        for name, p in head.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.mul_(5.0)
    return head


@pytest.fixture(autouse=True)
def _seeded(seed):  # every test draws its random inputs from the conftest seed
    return seed


def mask_by_loops(anchors_BA: torch.Tensor, s: int, q: int, causal: bool) -> torch.Tensor:
    """allowed_BRK spelled out: row (a, k) sees context j < anchor_a and own-block keys k2 <= k (any if not causal)."""
    b, a = anchors_BA.shape
    allowed = torch.zeros(b, a * q, s + a * q, dtype=torch.bool)
    for bi in range(b):
        for ai in range(a):
            for k in range(q):
                for j in range(s):
                    allowed[bi, ai * q + k, j] = j < anchors_BA[bi, ai]
                for k2 in range(q):
                    allowed[bi, ai * q + k, s + ai * q + k2] = k2 <= k or not causal
    return allowed


def test_default_target_layer_ids_follow_the_official_rule():
    assert default_target_layer_ids(36, 5) == [1, 9, 17, 25, 33]  # Qwen3-8B head
    assert default_target_layer_ids(40, 5) == [1, 10, 19, 28, 37]  # Qwen3.6-35B-A3B head
    assert default_target_layer_ids(28, 1) == [14]


def test_state_dict_has_exactly_the_official_keys():
    head = make_head()
    expected = {f"layers.{i}.{k}" for i in range(2) for k in OFFICIAL_LAYER_KEYS}
    expected |= {"norm.weight", "fc.weight", "hidden_norm.weight"}
    target = Qwen3ForCausalLM(qwen3_target_config())
    head.attach_target(target.get_input_embeddings(), target.get_output_embeddings())
    assert set(head.state_dict()) == expected  # the borrowed embedding / lm_head are not the head's
    assert head.state_dict()["fc.weight"].shape == (64, 3 * 64)
    assert sum(p.numel() for p in head.parameters()) == sum(v.numel() for v in head.state_dict().values())


def test_layers_match_transformers_qwen3_with_empty_context():
    """No context + causal head = a plain Qwen3 decoder stack: pins norm placement, q/k_norm before RoPE, RoPE."""
    head = make_head(causal=True)
    cfg = head.config
    model = Qwen3Model(Qwen3Config(
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size, num_hidden_layers=2,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim, vocab_size=cfg.vocab_size, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps,
    )).eval()
    missing, unexpected = model.load_state_dict(head.state_dict(), strict=False)
    assert unexpected == ["fc.weight", "hidden_norm.weight"] and missing == ["embed_tokens.weight"]
    embeds_BQM = torch.randn(2, 5, 64)
    positions_BQ = (7 + torch.arange(5)).expand(2, 5)
    expected = model(inputs_embeds=embeds_BQM, position_ids=positions_BQ).last_hidden_state
    got = head.forward_block(head.new_cache(2), embeds_BQM, positions_BQ)
    torch.testing.assert_close(got, expected, **F32)


def test_build_block_mask_matches_loops():
    anchors_BA = torch.tensor([[0, 3, 6], [2, 2, 9]])
    for causal in (True, False):
        got = build_block_mask(anchors_BA, 10, 4, causal)
        assert got.dtype == torch.bool and got.shape == (2, 1, 12, 22)
        assert torch.equal(got[:, 0], mask_by_loops(anchors_BA, 10, 4, causal))
    assert torch.equal(block_positions(torch.tensor([[4, 9]]), 2), torch.tensor([[4, 5, 9, 10]]))
    assert torch.equal(make_block_ids(torch.tensor([[7, 9]]), 0, 3), torch.tensor([[7, 0, 0, 9, 0, 0]]))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("batch", [1, 2])
def test_cached_block_forward_matches_naive_reference(causal, batch):
    head = make_head(causal)
    s, q = 9, head.config.block_size
    taps_BSF = torch.randn(batch, s, head.config.fused_width)
    embeds_BQM = torch.randn(batch, q, 64)
    cache = head.new_cache(batch)
    head.append_context(cache, taps_BSF)
    got = head.forward_block(cache, embeds_BQM)
    positions_BQ = (s + torch.arange(q)).expand(batch, q)
    allowed = mask_by_loops(torch.full((batch, 1), s), s, q, causal)
    want = draft_hidden_ref(head, head.project_context(taps_BSF), embeds_BQM, positions_BQ, allowed)
    torch.testing.assert_close(got, want, **F32)


@pytest.mark.parametrize("causal", [True, False])
def test_incremental_cache_equals_recomputation_and_crop_rolls_back(causal):
    """In fp64: chunked and one-shot projections round differently in fp32 (matmul blocking)."""
    head = make_head(causal).double()
    taps_BSF = torch.randn(1, 20, head.config.fused_width, dtype=torch.float64)
    embeds_BQM = torch.randn(1, 5, 64, dtype=torch.float64)
    cache, s = head.new_cache(), 0
    for n in (6, 1, 4, 0, 3):  # rounds append different numbers of committed rows
        head.append_context(cache, taps_BSF[:, s:s + n])
        s += n
        fresh = head.new_cache()
        head.append_context(fresh, taps_BSF[:, :s])
        assert cache.length == s
        torch.testing.assert_close(head.forward_block(cache, embeds_BQM), head.forward_block(fresh, embeds_BQM), **F64)
    cache.crop(8)
    other_BSF = torch.randn(1, 2, head.config.fused_width, dtype=torch.float64)
    head.append_context(cache, other_BSF)
    fresh = head.new_cache()
    head.append_context(fresh, torch.cat([taps_BSF[:, :8], other_BSF], dim=1))
    for k_got, k_want in zip(cache.keys + cache.values, fresh.keys + fresh.values):
        torch.testing.assert_close(k_got, k_want, **F64)
    torch.testing.assert_close(head.forward_block(cache, embeds_BQM), head.forward_block(fresh, embeds_BQM), **F64)
    with pytest.raises(ValueError, match="crop can only shorten"):
        cache.crop(11)


@pytest.mark.parametrize("causal", [True, False])
def test_many_block_training_forward_equals_each_block_alone(causal):
    head = make_head(causal)
    s, q = 14, head.config.block_size
    anchors_BA = torch.tensor([[0, 4, 5], [9, 2, 12]])  # unsorted, overlapping, at the start and near the end
    taps_BSF = torch.randn(2, s, head.config.fused_width)
    embeds_BRM = torch.randn(2, 3 * q, 64)
    context_BSM = head.project_context(taps_BSF)
    got = head.forward_blocks(context_BSM, embeds_BRM, block_positions(anchors_BA, q),
                              build_block_mask(anchors_BA, s, q, causal))
    for b in range(2):
        for a in range(3):
            x = int(anchors_BA[b, a])  # this block alone: context truncated to rows < anchor, positions x..x+Q-1
            allowed = mask_by_loops(torch.tensor([[x]]), x, q, causal)
            want = draft_hidden_ref(head, context_BSM[b:b + 1, :x], embeds_BRM[b:b + 1, a * q:(a + 1) * q],
                                    (x + torch.arange(q))[None], allowed)
            torch.testing.assert_close(got[b:b + 1, a * q:(a + 1) * q], want, **F32)


def test_training_forward_under_bf16_autocast_has_grads():
    head = make_head(True)
    anchors_BA = torch.tensor([[1, 6]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        context_BSM = head.project_context(torch.randn(1, 10, head.config.fused_width))
        out_BRM = head.forward_blocks(context_BSM, torch.randn(1, 10, 64), block_positions(anchors_BA, 5),
                                      build_block_mask(anchors_BA, 10, 5, True))
    out_BRM.float().square().mean().backward()
    assert torch.isfinite(out_BRM).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())


def filled_cache(head, taps_BSF):
    cache = head.new_cache(taps_BSF.shape[0])
    head.append_context(cache, taps_BSF)
    return cache


def test_causal_and_bidirectional_heads_differ():
    causal, bidir = make_head(True, seed=3), make_head(False, seed=3)
    assert all(torch.equal(v, bidir.state_dict()[k]) for k, v in causal.state_dict().items())
    taps_BSF = torch.randn(1, 6, causal.config.fused_width)
    embeds_BQM = torch.randn(1, 5, 64)
    out_c = causal.forward_block(filled_cache(causal, taps_BSF), embeds_BQM)
    out_b = bidir.forward_block(filled_cache(bidir, taps_BSF), embeds_BQM)
    assert (out_c[:, :-1] - out_b[:, :-1]).abs().amax(-1).min() > 1e-3  # every non-final slot changes
    perturbed_BQM = embeds_BQM.clone()
    perturbed_BQM[:, 3:] += 1.0  # later slots must not reach earlier ones in the causal head only
    for head, reaches in ((causal, False), (bidir, True)):
        before = head.forward_block(filled_cache(head, taps_BSF), embeds_BQM)[:, :3]
        after = head.forward_block(filled_cache(head, taps_BSF), perturbed_BQM)[:, :3]
        assert (after - before).abs().max() > 1e-3 if reaches else torch.equal(after, before)


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_draft_logits_borrow_the_target_embedding_and_lm_head(family, seed):
    if family == "qwen3":
        target_cfg = qwen3_target_config()
        target = Qwen3ForCausalLM(target_cfg).eval()
        cfg = make_draft_head_config(target_cfg, mask_token_id=MASK_ID, block_size=4)
    else:  # the head's own attention geometry may differ from the target's
        target_cfg = llama_target_config()
        target = LlamaForCausalLM(target_cfg).eval()
        cfg = make_draft_head_config(target_cfg, mask_token_id=3, num_layers=2, block_size=4, num_attention_heads=4,
                                     num_key_value_heads=2, head_dim=24, target_layer_ids=[0, 2])
    head = init_draft_head(cfg, seed=1)
    with pytest.raises(DraftHeadError, match="attach_target"):
        head.draft_logits(head.new_cache(), torch.tensor([5]))
    head.attach_target(target.get_input_embeddings(), target.get_output_embeddings())
    taps_BSF = torch.randn(2, 7, cfg.fused_width)
    cache = head.new_cache(2)
    head.append_context(cache, taps_BSF)
    logits_BLV = head.draft_logits(cache, torch.tensor([5, 9]))
    assert logits_BLV.shape == (2, 3, target_cfg.vocab_size)
    ids_BQ = torch.tensor([[5] + [cfg.mask_token_id] * 3, [9] + [cfg.mask_token_id] * 3])
    embeds = target.get_input_embeddings()(ids_BQ)
    allowed = mask_by_loops(torch.full((2, 1), 7), 7, 4, True)
    ref = draft_hidden_ref(head, head.project_context(taps_BSF), embeds, (7 + torch.arange(4)).expand(2, 4), allowed)
    torch.testing.assert_close(logits_BLV, target.lm_head(ref)[:, 1:], **F32)
    assert cache.length == 7  # drafting never stores block rows


def test_save_load_round_trip_is_bit_exact(tmp_path):
    head = make_head(True)
    cfg = DraftHeadConfig(**{**head.config.__dict__, "extra": {"auto_map": {"AutoModel": "dflash.DFlashDraftModel"}},
                             "dflash_extra": {"note": "kept"}})
    head = DraftHead(cfg).requires_grad_(False)
    head.load_state_dict(make_head(True).state_dict())
    head.save(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["architectures"] == ["DFlashDraftModel"] and raw["model_type"] == "qwen3"
    assert raw["is_causal"] is True and raw["layer_types"] == ["full_attention"] * 2
    assert raw["dflash_config"] == {"causal_head": True, "mask_token_id": MASK_ID, "target_layer_ids": [0, 2, 3],
                                    "note": "kept"}
    assert raw["block_size"] == 5 and raw["num_target_layers"] == 4 and raw["auto_map"]
    assert raw["max_position_embeddings"] == cfg.max_position_embeddings and raw["dtype"] == "float32"
    loaded = load_draft_head(tmp_path, target_config=qwen3_target_config())
    assert loaded.config == cfg
    assert loaded.state_dict().keys() == head.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in head.state_dict().items())
    bidir_dir = tmp_path / "bidir"
    make_head(False).save(bidir_dir)
    assert "is_causal" not in json.loads((bidir_dir / "config.json").read_text())
    assert load_draft_head(bidir_dir).config.causal_head is False


def official_files(path, prefix="", shards=1, cfg_edit=None, drop=None, extra_tensor=None, bad_shape=None):
    """Write a head by hand in the official layout: a released-style config.json and bf16 safetensors."""
    config = {
        "architectures": ["DFlashDraftModel"], "auto_map": {"AutoModel": "dflash.DFlashDraftModel"},
        "block_size": 16, "dflash_config": {"causal_head": True, "mask_token_id": MASK_ID, "target_layer_ids": [1, 3]},
        "dtype": "bfloat16", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "num_target_layers": 4,
        "vocab_size": 256, "rope_parameters": {"rope_theta": 1000000, "rope_type": "default"}, "rms_norm_eps": 1e-6,
    }
    if cfg_edit:
        cfg_edit(config)
    shapes = {"self_attn.q_proj.weight": (64, 64), "self_attn.k_proj.weight": (32, 64),
              "self_attn.v_proj.weight": (32, 64), "self_attn.o_proj.weight": (64, 64),
              "self_attn.q_norm.weight": (16,), "self_attn.k_norm.weight": (16,), "mlp.gate_proj.weight": (96, 64),
              "mlp.up_proj.weight": (96, 64), "mlp.down_proj.weight": (64, 96), "input_layernorm.weight": (64,),
              "post_attention_layernorm.weight": (64,)}
    gen = torch.Generator().manual_seed(0)
    tensors = {f"layers.{i}.{k}": torch.randn(s, generator=gen) for i in range(2) for k, s in shapes.items()}
    tensors |= {"norm.weight": torch.randn(64, generator=gen), "fc.weight": torch.randn(64, 128, generator=gen),
                "hidden_norm.weight": torch.randn(64, generator=gen)}
    tensors = {k: v.to(torch.bfloat16) for k, v in tensors.items()}
    for key in drop or []:
        tensors.pop(key)
    tensors |= extra_tensor or {}
    if bad_shape:
        tensors[bad_shape[0]] = torch.zeros(bad_shape[1], dtype=torch.bfloat16)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    keys = sorted(tensors)
    for n in range(shards):
        part = {prefix + k: tensors[k] for k in keys[n::shards]}
        save_file(part, str(path / f"model-{n + 1:05d}-of-{shards:05d}.safetensors"), metadata={"format": "pt"})
    return tensors


@pytest.mark.parametrize("prefix,shards", [("", 1), ("model.", 1), ("model.", 3)])
def test_handwritten_official_checkpoint_loads(tmp_path, prefix, shards):
    tensors = official_files(tmp_path, prefix, shards)
    head = load_draft_head(tmp_path, target_config=qwen3_target_config())
    cfg = head.config
    assert (cfg.block_size, cfg.target_layer_ids, cfg.causal_head, cfg.rope_theta) == (16, (1, 3), True, 1e6)
    assert cfg.extra["auto_map"] and "dtype" not in cfg.extra  # unknown keys kept; dtype describes the file
    assert all(torch.equal(head.state_dict()[k], v.float()) for k, v in tensors.items())
    assert head.fc.weight.dtype == torch.float32
    bf16 = load_draft_head(tmp_path, dtype=torch.bfloat16)
    assert all(torch.equal(bf16.state_dict()[k], v) for k, v in tensors.items())


def _set(key, value):
    def edit(config):
        node = config
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return edit


BAD_CHECKPOINTS = [  # (id, official_files kwargs, target config or None, message fragments)
    ("missing key", dict(drop=["layers.1.mlp.up_proj.weight"]), None, ["missing", "layers.1.mlp.up_proj.weight"]),
    ("unexpected key", dict(extra_tensor={"lm_head.weight": torch.zeros(256, 64, dtype=torch.bfloat16)}), None,
     ["unexpected", "lm_head.weight"]),
    ("shape", dict(bad_shape=("layers.0.self_attn.k_norm.weight", (8,))), None,
     ["layers.0.self_attn.k_norm.weight", "expected [16]", "got [8]"]),
    ("fc width", dict(cfg_edit=_set("dflash_config.target_layer_ids", [0, 1, 3])), None,
     ["fc.weight input width 128", "len(target_layer_ids)=3"]),
    ("ids vs num_target_layers", dict(cfg_edit=_set("dflash_config.target_layer_ids", [1, 4])), None,
     ["target_layer_ids", "[4]", "[0, 4)"]),
    ("ids vs target", dict(cfg_edit=_set("num_target_layers", None)), qwen3_target_config(num_hidden_layers=3),
     ["[3]", "outside the target's 3 layers"]),
    ("hidden vs target", {}, qwen3_target_config(hidden_size=96), ["hidden_size=64", "target hidden_size=96"]),
    ("vocab vs target", {}, qwen3_target_config(vocab_size=320), ["vocab_size=256", "target vocab_size=320"]),
    ("mask id", dict(cfg_edit=_set("dflash_config.mask_token_id", 999)), None, ["mask_token_id=999", "[0, 256)"]),
    ("block size", dict(cfg_edit=_set("block_size", 1)), None, ["block_size=1", ">= 2"]),
    ("sliding window", dict(cfg_edit=_set("layer_types", ["full_attention", "sliding_attention"])), None,
     ["sliding_attention", "not implemented"]),
    ("is_causal contradiction", dict(cfg_edit=_set("is_causal", False)), None, ["is_causal=False", "contradicts"]),
    ("target_hidden_size", dict(cfg_edit=_set("dflash_config.target_hidden_size", 32)), None,
     ["target_hidden_size=32", "HiddenDimAdapter"]),
    ("no mask id", dict(cfg_edit=lambda c: c["dflash_config"].pop("mask_token_id")), None,
     ["mask_token_id is missing"]),
    ("attention bias", dict(cfg_edit=_set("attention_bias", True)), None,
     ["attention_bias=True", "no attention biases"]),
    ("no block size", dict(cfg_edit=lambda c: c.pop("block_size")), None, ["block_size is missing"]),
]


def test_keys_copied_from_a_tied_target_are_ignored_with_a_log_line(tmp_path, caplog):
    """Released configs can carry keys of the target they were copied from (tie_word_embeddings: true, bos/eos ids,
    use_cache, sliding_window: null...). The official loader ignores them; so does this one, with a log line for
    tie_word_embeddings (the head has no embedding or lm_head to tie). The weights load unchanged."""
    def tied(config):
        config.update(tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, use_cache=True, sliding_window=None,
                      use_sliding_window=False, attention_dropout=0.0, initializer_range=0.02)
    tensors = official_files(tmp_path, cfg_edit=tied)
    with caplog.at_level("INFO", logger="jetspec_sglang.draft_head_config"):
        head = load_draft_head(tmp_path, target_config=qwen3_target_config())
    assert "tie_word_embeddings=true ignored" in caplog.text
    assert all(torch.equal(head.state_dict()[k], v.float()) for k, v in tensors.items())
    assert head.config.extra["eos_token_id"] == 2 and "tie_word_embeddings" not in head.config.extra
    assert head.config.to_dict()["tie_word_embeddings"] is False


def test_block_size_precedence(tmp_path, caplog):
    """Top-level block_size first (the official loader reads only it), dflash_config.block_size as the fallback;
    a disagreement is logged."""
    official_files(tmp_path / "nested",
                   cfg_edit=lambda c: c["dflash_config"].update(block_size=c.pop("block_size") // 2))
    assert load_draft_head(tmp_path / "nested").config.block_size == 8
    official_files(tmp_path / "both", cfg_edit=_set("dflash_config.block_size", 8))
    with caplog.at_level("WARNING", logger="jetspec_sglang.draft_head_config"):
        assert load_draft_head(tmp_path / "both").config.block_size == 16
    assert "block_size=16 and dflash_config.block_size=8 differ; using the top-level 16" in caplog.text


@pytest.mark.parametrize("case", BAD_CHECKPOINTS, ids=[c[0] for c in BAD_CHECKPOINTS])
def test_bad_checkpoint_raises_a_named_error(tmp_path, case):
    _, kwargs, target_config, fragments = case
    official_files(tmp_path, **kwargs)
    with pytest.raises(DraftHeadError) as info:
        load_draft_head(tmp_path, target_config=target_config)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_missing_or_corrupt_files_raise_named_errors(tmp_path):
    with pytest.raises(DraftHeadError, match="no config.json"):
        load_draft_head(tmp_path)
    official_files(tmp_path)
    weights = tmp_path / "model-00001-of-00001.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(DraftHeadError, match="corrupt or truncated safetensors"):
        load_draft_head(tmp_path)
    weights.unlink()
    with pytest.raises(DraftHeadError, match=r"no \*\.safetensors"):
        load_draft_head(tmp_path)
    assert issubclass(DraftHeadError, ValueError)


def test_init_is_reproducible_and_config_validates():
    cfg = make_head().config
    a, b = init_draft_head(cfg, seed=7), init_draft_head(cfg, seed=7)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    assert DraftHeadConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(DraftHeadError, match="mask_token_id=256"):
        make_draft_head_config(qwen3_target_config(), mask_token_id=256)


def test_config_written_by_transformers_save_pretrained_parses():
    """Heads saved through HF `save_pretrained` carry every Qwen3Config key (layer_types, sliding_window: null...)."""
    raw = qwen3_target_config(num_hidden_layers=2).to_dict()
    raw.update(architectures=["DFlashDraftModel"], block_size=16, num_target_layers=36,
               dflash_config={"causal_head": True, "mask_token_id": 7})
    cfg = DraftHeadConfig.from_dict(raw)
    assert cfg.target_layer_ids == (1, 33) and cfg.rope_theta == 1e6 and cfg.extra["sliding_window"] is None
    assert DraftHeadConfig.from_dict(cfg.to_dict()) == cfg
