"""The draft head's config and checkpoint files, in the official `DFlashDraftModel` layout (jetspec-method.md 2-3).

Owns `DraftHeadConfig` (parsed from and written back to `config.json`), the checks against a target model, and the
raw safetensors read/write with key and shape validation. The nn.Module lives in `draft_head.py`. Follows
`hao-ai-lab/JetSpec` `jetspec/models/draft_head.py` and SGLang's `srt/models/dflash.py::DFlashDraftModel.load_weights`.
No sglang import.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from typing import Any

import torch

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ARCHITECTURE = "DFlashDraftModel"
ACCEPTED_ARCHITECTURES = (ARCHITECTURE, "Qwen3DFlashDraftModel")
FULL_ATTENTION = "full_attention"
CHECKPOINT_PREFIX = "model."  # some exports nest every key under it; SGLang strips it too
IGNORED_KEY_SUFFIXES = ("rotary_emb.inv_freq",)  # HF rotary caches: not weights
DEFAULT_ROPE_THETA = 10000.0  # transformers' Qwen3Config defaults, used when config.json omits the key
DEFAULT_MAX_POSITIONS = 32768


class DraftHeadError(ValueError):
    """A draft-head config or checkpoint is unusable; the message names the input, the value and the fix."""


def default_target_layer_ids(num_target_layers: int, num_draft_layers: int) -> list[int]:
    """Official default taps: one draft layer -> [L // 2]; else evenly over [1, L-3].

    Example: (36, 5) -> [1, 9, 17, 25, 33]; (28, 1) -> [14].
    """
    if num_draft_layers == 1:
        return [num_target_layers // 2]
    span = num_target_layers - 4
    return [int(round(1 + i * span / (num_draft_layers - 1))) for i in range(num_draft_layers)]


def block_size_of(raw: dict[str, Any]) -> int:
    """The head's trained block B (= L + 1) from a config.json dict, with the official precedence: the top-level
    `block_size` (the only one the official loader reads, jetspec-method.md 3.2); `dflash_config.block_size` only
    when the top level has none. (SGLang's DFLASH reads dflash_config first, dflash_utils.py:609; under JETSPEC
    that reading only sizes DFLASH's start-up log, the worker sets the block itself.)
    Example: {"block_size": 16, "dflash_config": {"block_size": 8}} -> 16 (and a warning)."""
    top, nested = raw.get("block_size"), (raw.get("dflash_config") or {}).get("block_size")
    if top is not None and nested is not None and top != nested:
        logger.warning("config.json: block_size=%s and dflash_config.block_size=%s differ; using the top-level %s "
                       "as the official loader does", top, nested, top)
    block = top if top is not None else nested
    if block is None:
        raise DraftHeadError("config.json: block_size is missing; set the top-level block_size to the block the head "
                             "was trained with (released heads: 16)")
    if isinstance(block, bool) or not isinstance(block, int) or block < 2:
        raise DraftHeadError(f"config.json: block_size={block!r} must be an integer >= 2 (anchor + at least one MASK "
                             f"slot); released heads use 16")
    return block


@dataclasses.dataclass(frozen=True)
class DraftHeadConfig:
    hidden_size: int  # M; must equal the target's hidden size (the head borrows its embedding and lm_head)
    intermediate_size: int  # SwiGLU width
    num_hidden_layers: int  # draft decoder layers
    num_attention_heads: int  # H
    num_key_value_heads: int  # G; H % G == 0
    head_dim: int  # E; even (RoPE)
    vocab_size: int  # V of the target; bounds mask_token_id
    block_size: int  # Q = L + 1 rows: [anchor, MASK x L]; >= 2
    target_layer_ids: tuple[int, ...]  # tapped target layers, in concat order
    mask_token_id: int  # token id of the MASK slots
    causal_head: bool  # True: block-causal in-block attention (JetSpec); False: bidirectional (DFlash)
    num_target_layers: int | None = None  # target depth; bounds target_layer_ids when known
    rms_norm_eps: float = 1e-6
    rope_theta: float = DEFAULT_ROPE_THETA
    max_position_embeddings: int = DEFAULT_MAX_POSITIONS
    target_hidden_size: int | None = None  # optional dflash_config key; only == hidden_size is supported
    extra: dict = dataclasses.field(default_factory=dict, hash=False)  # unknown config.json keys, kept verbatim
    dflash_extra: dict = dataclasses.field(default_factory=dict, hash=False)  # unknown dflash_config keys

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_layer_ids", tuple(int(i) for i in self.target_layer_ids))
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "vocab_size"):
            if int(getattr(self, name)) <= 0:
                raise DraftHeadError(f"draft head config: {name}={getattr(self, name)} must be a positive integer")
        if self.block_size < 2:
            raise DraftHeadError(f"draft head config: block_size={self.block_size} must be >= 2 (anchor + at least "
                                 f"one MASK slot); released heads use 16")
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise DraftHeadError(f"draft head config: dflash_config.mask_token_id={self.mask_token_id} is outside the "
                                 f"vocabulary [0, {self.vocab_size}); set it to a token id of the target vocabulary")
        if self.num_attention_heads % self.num_key_value_heads:
            raise DraftHeadError(f"draft head config: num_attention_heads={self.num_attention_heads} is not a multiple "
                                 f"of num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise DraftHeadError(f"draft head config: head_dim={self.head_dim} must be even for RoPE")
        if not self.target_layer_ids:
            raise DraftHeadError("draft head config: dflash_config.target_layer_ids is empty; list the tapped layers")
        bad = [i for i in self.target_layer_ids if i < 0 or (self.num_target_layers is not None
                                                             and i >= self.num_target_layers)]
        if bad:
            raise DraftHeadError(f"draft head config: target_layer_ids {list(self.target_layer_ids)} has {bad} outside "
                                 f"the target's layers [0, {self.num_target_layers}); fix target_layer_ids or "
                                 f"num_target_layers")
        if self.target_hidden_size is not None and self.target_hidden_size != self.hidden_size:
            raise DraftHeadError(f"draft head config: dflash_config.target_hidden_size={self.target_hidden_size} != "
                                 f"hidden_size={self.hidden_size}; the official random-init HiddenDimAdapter is "
                                 f"smoke-test only and not supported; train a head at the target's hidden size")

    @property
    def depth(self) -> int:
        """L, the number of predicted slots (block_size - 1)."""
        return self.block_size - 1

    @property
    def fused_width(self) -> int:
        """F, the width of the concatenated taps: len(target_layer_ids) * hidden_size."""
        return len(self.target_layer_ids) * self.hidden_size

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DraftHeadConfig:
        """Parse an official `config.json` dict; unknown keys go to `extra` / `dflash_extra`."""
        d = dict(raw)
        arch = d.pop("architectures", None) or [ARCHITECTURE]
        if not any(a in ACCEPTED_ARCHITECTURES for a in arch):
            raise DraftHeadError(f"config.json: architectures={arch} is not a DFlash draft head; expected "
                                 f"[\"{ARCHITECTURE}\"]")
        for key in ("dtype", "torch_dtype"):  # describes the stored tensors; write_checkpoint rewrites it
            d.pop(key, None)
        model_type = d.pop("model_type", "qwen3")
        if model_type != "qwen3":
            raise DraftHeadError(f"config.json: model_type={model_type!r}; official heads are Qwen3-style "
                                 f"(model_type \"qwen3\") whatever the target")
        if d.pop("attention_bias", False):
            raise DraftHeadError(f"config.json: attention_bias={raw['attention_bias']!r} is not supported; the "
                                 f"official head has no attention biases (attention_bias=false)")
        if d.pop("tie_word_embeddings", False):  # often copied from a tied target's config
            logger.info("config.json: tie_word_embeddings=true ignored: the head has no embedding or lm_head of its "
                        "own (it uses the target's), and the official loader ignores the key too")
        if d.get("hidden_act", "silu") != "silu":
            raise DraftHeadError(f"config.json: hidden_act={d['hidden_act']!r}; only the SwiGLU 'silu' MLP is "
                                 f"supported")
        n_layers = int(d.pop("num_hidden_layers"))
        layer_types = d.pop("layer_types", None) or [FULL_ATTENTION] * n_layers
        if len(layer_types) != n_layers:
            raise DraftHeadError(f"config.json: layer_types has {len(layer_types)} entries but num_hidden_layers="
                                 f"{n_layers}; give one entry per draft layer")
        if d.get("use_sliding_window") or any(t != FULL_ATTENTION for t in layer_types):
            raise DraftHeadError(f"config.json: layer_types={layer_types} / use_sliding_window="
                                 f"{d.get('use_sliding_window')} ask for sliding-window attention, which is not "
                                 f"implemented (NotImplemented); only \"{FULL_ATTENTION}\" layers are supported")
        rope = d.pop("rope_parameters", None) or {}
        if rope.get("rope_type", "default") != "default" or set(rope) - {"rope_theta", "rope_type"} or (
                d.get("rope_scaling") not in (None, {}) and d["rope_scaling"].get("rope_type", "default") != "default"):
            raise DraftHeadError(f"config.json: rope_parameters={rope} rope_scaling={d.get('rope_scaling')}: only "
                                 f"default (unscaled, full-width neox) RoPE is supported")
        rope_theta = float(rope.get("rope_theta", d.pop("rope_theta", DEFAULT_ROPE_THETA)))
        d.pop("rope_theta", None)
        block_size = block_size_of(raw)
        d.pop("block_size", None)
        dflash = dict(d.pop("dflash_config", None) or {})
        causal_head = bool(dflash.pop("causal_head", False))
        is_causal = d.pop("is_causal", None)
        if is_causal is not None and bool(is_causal) != causal_head:
            raise DraftHeadError(f"config.json: is_causal={is_causal} contradicts dflash_config.causal_head="
                                 f"{causal_head}; SGLang would run the head with the wrong in-block mask; make "
                                 f"them agree (or drop is_causal)")
        if "mask_token_id" not in dflash:
            raise DraftHeadError("config.json: dflash_config.mask_token_id is missing; set it to the MASK token id "
                                 "the head was trained with")
        num_target_layers = d.pop("num_target_layers", None)
        ids = dflash.pop("target_layer_ids", None)
        if ids is None:
            if num_target_layers is None:
                raise DraftHeadError("config.json: neither dflash_config.target_layer_ids nor num_target_layers is "
                                     "set; add target_layer_ids")
            ids = default_target_layer_ids(int(num_target_layers), n_layers)
        hidden = int(d.pop("hidden_size"))
        n_heads = int(d.pop("num_attention_heads"))
        return cls(
            hidden_size=hidden, intermediate_size=int(d.pop("intermediate_size")), num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=int(d.pop("num_key_value_heads", n_heads)),
            head_dim=int(d.pop("head_dim", None) or hidden // n_heads), vocab_size=int(d.pop("vocab_size")),
            block_size=block_size, target_layer_ids=tuple(ids),
            mask_token_id=int(dflash.pop("mask_token_id")), causal_head=causal_head,
            num_target_layers=None if num_target_layers is None else int(num_target_layers),
            rms_norm_eps=float(d.pop("rms_norm_eps", 1e-6)), rope_theta=rope_theta,
            max_position_embeddings=int(d.pop("max_position_embeddings", DEFAULT_MAX_POSITIONS)),
            target_hidden_size=dflash.pop("target_hidden_size", None), extra=d, dflash_extra=dflash,
        )

    def to_dict(self) -> dict[str, Any]:
        """The official `config.json` dict, plus `is_causal`/`layer_types` so SGLang 0.5.23 honours causal_head."""
        dflash = dict(self.dflash_extra, causal_head=self.causal_head, mask_token_id=self.mask_token_id,
                      target_layer_ids=list(self.target_layer_ids))
        if self.target_hidden_size is not None:
            dflash["target_hidden_size"] = self.target_hidden_size
        out = dict(self.extra)
        out.update(
            architectures=[ARCHITECTURE], model_type="qwen3", block_size=self.block_size, dflash_config=dflash,
            hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads, head_dim=self.head_dim, rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta, rope_parameters={"rope_theta": self.rope_theta, "rope_type": "default"},
            max_position_embeddings=self.max_position_embeddings, vocab_size=self.vocab_size,
            tie_word_embeddings=False, attention_bias=False,
            layer_types=[FULL_ATTENTION] * self.num_hidden_layers,
        )
        if self.num_target_layers is not None:
            out["num_target_layers"] = self.num_target_layers
        if self.causal_head:  # SGLang derives causality from is_causal + layer_types, not causal_head (method 3.5)
            out["is_causal"] = True
        return out


def _text_config(target_config: Any) -> Any:
    get = getattr(target_config, "get_text_config", None)
    return get() if callable(get) else target_config


def target_rope_theta(target_config: Any, default: float = DEFAULT_ROPE_THETA) -> float:
    """rope_theta of an HF config: `rope_parameters.rope_theta` (transformers 5) or `rope_theta` (4.x)."""
    cfg = _text_config(target_config)
    rope = getattr(cfg, "rope_parameters", None) or {}
    return float(rope.get("rope_theta", getattr(cfg, "rope_theta", default)))


def check_against_target(config: DraftHeadConfig, target_config: Any) -> None:
    """Raise DraftHeadError unless the head fits the target (an HF PretrainedConfig, Qwen3 or Llama)."""
    t = _text_config(target_config)
    t_layers, t_hidden, t_vocab = int(t.num_hidden_layers), int(t.hidden_size), int(t.vocab_size)
    bad = [i for i in config.target_layer_ids if not 0 <= i < t_layers]
    if bad:
        raise DraftHeadError(f"draft head: target_layer_ids {list(config.target_layer_ids)} has {bad} outside the "
                             f"target's {t_layers} layers [0, {t_layers}); this head was made for another target")
    if config.num_target_layers is not None and config.num_target_layers != t_layers:
        raise DraftHeadError(f"draft head: num_target_layers={config.num_target_layers} but the target has "
                             f"{t_layers} layers; use the head trained for this target")
    if config.hidden_size != t_hidden:
        raise DraftHeadError(f"draft head: hidden_size={config.hidden_size} != target hidden_size={t_hidden}; the "
                             f"head reads the target's embedding and lm_head, so they must match")
    if config.vocab_size != t_vocab:
        raise DraftHeadError(f"draft head: vocab_size={config.vocab_size} != target vocab_size={t_vocab}; use the "
                             f"head trained for this target's tokenizer")
    if not 0 <= config.mask_token_id < t_vocab:
        raise DraftHeadError(f"draft head: mask_token_id={config.mask_token_id} is outside the target vocabulary "
                             f"[0, {t_vocab})")


def make_draft_head_config(
    target_config: Any, *, mask_token_id: int, num_layers: int = 1, block_size: int = 16, causal_head: bool = True,
    target_layer_ids: list[int] | None = None, intermediate_size: int | None = None,
    num_attention_heads: int | None = None, num_key_value_heads: int | None = None, head_dim: int | None = None,
) -> DraftHeadConfig:
    """A head config for `target_config` (HF config of a Qwen3/Llama target); unset sizes copy the target's."""
    t = _text_config(target_config)
    n_layers = int(t.num_hidden_layers)
    if num_attention_heads is None:  # copy the target's attention geometry
        num_attention_heads = int(t.num_attention_heads)
        num_key_value_heads = num_key_value_heads or int(getattr(t, "num_key_value_heads", None) or num_attention_heads)
        head_dim = head_dim or getattr(t, "head_dim", None)
    return DraftHeadConfig(
        hidden_size=int(t.hidden_size), intermediate_size=intermediate_size or int(t.intermediate_size),
        num_hidden_layers=num_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads or num_attention_heads,
        head_dim=int(head_dim or int(t.hidden_size) // num_attention_heads), vocab_size=int(t.vocab_size),
        block_size=block_size,
        target_layer_ids=tuple(target_layer_ids or default_target_layer_ids(n_layers, num_layers)),
        mask_token_id=mask_token_id, causal_head=causal_head, num_target_layers=n_layers,
        rms_norm_eps=float(getattr(t, "rms_norm_eps", 1e-6)), rope_theta=target_rope_theta(t),
        max_position_embeddings=int(getattr(t, "max_position_embeddings", DEFAULT_MAX_POSITIONS)),
    )


def expected_weight_shapes(config: DraftHeadConfig) -> dict[str, tuple[int, ...]]:
    """The official state-dict keys and their shapes (no embedding, no lm_head)."""
    m, e, f = config.hidden_size, config.head_dim, config.intermediate_size
    hq, hkv = config.num_attention_heads * e, config.num_key_value_heads * e
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(config.num_hidden_layers):
        p = f"layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (hq, m), p + "self_attn.k_proj.weight": (hkv, m),
            p + "self_attn.v_proj.weight": (hkv, m), p + "self_attn.o_proj.weight": (m, hq),
            p + "self_attn.q_norm.weight": (e,), p + "self_attn.k_norm.weight": (e,),
            p + "mlp.gate_proj.weight": (f, m), p + "mlp.up_proj.weight": (f, m), p + "mlp.down_proj.weight": (m, f),
            p + "input_layernorm.weight": (m,), p + "post_attention_layernorm.weight": (m,),
        })
    shapes.update({"norm.weight": (m,), "fc.weight": (m, config.fused_width), "hidden_norm.weight": (m,)})
    return shapes


def check_state_dict(config: DraftHeadConfig, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Raise DraftHeadError on missing / unexpected keys or a shape mismatch, listing every offender."""
    expected = expected_weight_shapes(config)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise DraftHeadError(f"{source}: state dict does not match the official DFlashDraftModel keys for "
                             f"num_hidden_layers={config.num_hidden_layers}: missing {missing}, unexpected "
                             f"{unexpected}; re-export the head with the official key names")
    fc_in = tuple(tensors["fc.weight"].shape)[1:]
    if fc_in and fc_in[0] != config.fused_width:
        raise DraftHeadError(f"{source}: fc.weight input width {fc_in[0]} != len(target_layer_ids)="
                             f"{len(config.target_layer_ids)} x hidden {config.hidden_size} = {config.fused_width}; "
                             f"target_layer_ids or hidden_size in config.json do not match the weights")
    bad = [f"{k}: expected {list(s)}, got {list(tensors[k].shape)}" for k, s in expected.items()
           if tuple(tensors[k].shape) != s]
    if bad:
        raise DraftHeadError(f"{source}: shape mismatch against config.json: {'; '.join(bad)}; the config and the "
                             f"weights come from different heads")


def read_checkpoint(path: str | pathlib.Path) -> tuple[DraftHeadConfig, dict[str, torch.Tensor]]:
    """Read config.json + every *.safetensors shard of an official head directory; strip a `model.` prefix."""
    from safetensors.torch import load_file

    root = pathlib.Path(path)
    if not (root / CONFIG_FILE).is_file():
        raise DraftHeadError(f"draft head path {str(root)!r}: no {CONFIG_FILE}; a head directory holds config.json "
                             f"+ *.safetensors (official DFlashDraftModel layout)")
    try:
        config = DraftHeadConfig.from_dict(json.loads((root / CONFIG_FILE).read_text()))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise DraftHeadError(f"{root / CONFIG_FILE}: unreadable or incomplete config ({type(exc).__name__}: {exc}); "
                             f"re-download or re-save the head") from exc
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise DraftHeadError(f"draft head path {str(root)!r}: no *.safetensors file; the weights are missing "
                             f"(.bin checkpoints are not supported: convert them to safetensors)")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            shard = load_file(str(file))
        except Exception as exc:  # safetensors raises SafetensorError / OSError on truncated or corrupt files
            raise DraftHeadError(f"{file}: corrupt or truncated safetensors file ({type(exc).__name__}: {exc}); "
                                 f"re-download or re-save the head") from exc
        for key, value in shard.items():
            name = key[len(CHECKPOINT_PREFIX):] if key.startswith(CHECKPOINT_PREFIX) else key
            if name.endswith(IGNORED_KEY_SUFFIXES):
                continue
            if name in tensors:
                raise DraftHeadError(f"{file}: key {key!r} duplicates {name!r} (after stripping 'model.'); keep "
                                     f"one copy of each weight")
            tensors[name] = value
    check_state_dict(config, tensors, str(root))
    return config, tensors


def write_checkpoint(path: str | pathlib.Path, config: DraftHeadConfig, tensors: dict[str, torch.Tensor]) -> None:
    """Write config.json + model.safetensors in the official layout (validated first)."""
    from safetensors.torch import save_file

    root = pathlib.Path(path)
    check_state_dict(config, tensors, str(root))
    root.mkdir(parents=True, exist_ok=True)
    raw = config.to_dict()
    raw["dtype"] = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    (root / CONFIG_FILE).write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(root / WEIGHTS_FILE),
              metadata={"format": "pt"})
    logger.info("saved draft head (%d layers, %d tensors) to %s", config.num_hidden_layers, len(tensors), root)
