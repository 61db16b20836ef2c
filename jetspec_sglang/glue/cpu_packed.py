"""Packed bf16 weights for SGLang's CPU linears and LM head (packed_linear.py), as three CPU-only hooks.

* AFTER ModelRunner.load_model: pack the runner's unquantized linears (SGLang's and plain nn.Linear ones, whose
  instance forward then reads the packed copy) and its LM head when
  JETSPEC_CPU_PACKED_WEIGHTS allows it (auto: JETSPEC servers; on: every CPU server with the plugin; off: none)
  and the model dtype is bf16 (fp32 never: oneDNN's packed fp32 kernel rounds differently; fp16 unchecked).
* AROUND UnquantizedLinearMethod.apply and LogitsProcessor._compute_lm_head: use the packed copy when the layer
  has one, for the same tensor the original would have read; everything else goes to the original.
Outputs are bit-identical to stock SGLang's (packed_linear.py); what changes is the per-call weight reorder oneDNN
does for a plain bf16 weight on a CPU without AMX. A packed module carries SGLang's own
`_derived_weight_cache_error`, so online weight updates are refused with a message instead of serving stale
packed copies (weight_updater._unsupported_derived_weight_cache_error).
"""
from __future__ import annotations

import logging
import types

import psutil
import torch

from jetspec_sglang import packed_linear
from jetspec_sglang.config import cpu_packed_weights

logger = logging.getLogger(__name__)

PACKED_ATTR = "_jetspec_packed_weight"  # on a packed module: (packed copy, the weight Parameter it was made from)
STATS_ATTR = "_jetspec_packed_stats"  # on a ModelRunner: (modules packed, bytes) of its model
MAX_MEMORY_SHARE = 0.5  # never pack when the copies would take more of the available memory than this
UPDATE_REFUSAL = ("online weight updates are not supported while jetspec-sglang's CPU packed weights are active "
                  "(their packed copies would keep serving the old weights); restart the server with "
                  "JETSPEC_CPU_PACKED_WEIGHTS=off to update weights online")


def pack_enabled(runner) -> tuple[bool, str]:
    """(pack this runner's model?, why) from JETSPEC_CPU_PACKED_WEIGHTS, the device, the algorithm and the dtype."""
    from jetspec_sglang.glue.hooks import is_jetspec

    setting = cpu_packed_weights()  # raises ConfigError naming the fix
    dtype = runner.model_config.dtype
    if str(runner.device) != "cpu":
        return False, f"device {runner.device}"
    if setting == "off":
        return False, "JETSPEC_CPU_PACKED_WEIGHTS=off"
    if setting == "auto" and not is_jetspec(runner.spec_algorithm):
        return False, "not a JETSPEC server (JETSPEC_CPU_PACKED_WEIGHTS=auto)"
    if not packed_linear.packable_dtype(dtype):
        return False, f"{dtype} is not packed (bf16 only, where oneDNN has a bf16 path)"
    return True, f"JETSPEC_CPU_PACKED_WEIGHTS={setting}, {dtype}"


def packable_modules(model) -> list:
    """The modules of `model` pack_model would pack now: unquantized SGLang linears, plain nn.Linear ones (e.g. a
    DFlash head's fc) and the LM head, with a 2-D CPU weight of a packable dtype, not on SGLang's own AMX path and
    not packed from this very weight already (a draft model shares its target's LM head)."""
    from sglang.srt.layers.linear import LinearBase
    from sglang.srt.layers.logits_processor import should_apply_lm_head_quant_method
    from sglang.srt.layers.quantization.unquant import UnquantizedLinearMethod

    modules = [m for m in model.modules()
               if (isinstance(m, LinearBase) and type(getattr(m, "quant_method", None)) is UnquantizedLinearMethod)
               or type(m) is torch.nn.Linear]
    lm_head = getattr(model, "lm_head", None)
    if (lm_head is not None and getattr(lm_head, "weight", None) is not None and not hasattr(lm_head, "set_lora")
            and not should_apply_lm_head_quant_method(lm_head, getattr(lm_head, "quant_method", None))):
        modules.append(lm_head)  # the LogitsProcessor's plain-matmul branch (a quantized head keeps its method)
    out, seen = [], set()
    for module in modules:
        weight = module.weight
        entry = getattr(module, PACKED_ATTR, None)
        if (id(module) in seen or weight.dim() != 2 or weight.device.type != "cpu"
                or not packed_linear.packable_dtype(weight.dtype)
                or getattr(module, "use_intel_amx_backend", False)  # SGLang's AMX path packs its own (VNNI)
                or (entry is not None and entry[1] is weight)):
            continue
        seen.add(id(module))
        out.append(module)
    return out


def pack_model(model, modules: list | None = None) -> tuple[int, int]:
    """Pack `modules` (default: `packable_modules(model)`; idempotent). Returns (modules packed, bytes of copies)."""
    count = nbytes = 0
    for module in packable_modules(model) if modules is None else modules:
        weight = module.weight
        setattr(module, PACKED_ATTR, (packed_linear.pack_weight(weight), weight))
        module._derived_weight_cache_error = UPDATE_REFUSAL
        if type(module) is torch.nn.Linear:  # not reached by the hooks: this instance's forward reads the copy
            module.forward = types.MethodType(_nn_linear_forward, module)
        count, nbytes = count + 1, nbytes + packed_linear.packed_bytes(weight)
    return count, nbytes


def pack_after_load(result, self, *args, **kwargs):
    """AFTER ModelRunner.load_model (target and draft runners alike), before SGLang sizes its KV pool from the
    memory left, so the copies are accounted for. Skipped, with a warning, when they would take more than
    MAX_MEMORY_SHARE of the available memory."""
    enabled, why = pack_enabled(self)
    if not enabled:
        logger.info("CPU packed weights: not packed (%s)", why)
        return result
    modules = packable_modules(self.model)
    need = sum(packed_linear.packed_bytes(m.weight) for m in modules)
    available = psutil.virtual_memory().available
    if need > MAX_MEMORY_SHARE * available:
        logger.warning("CPU packed weights: not packed: the copies would take %.0f MB of %.0f MB available (more "
                       "than %d %%); set JETSPEC_CPU_PACKED_WEIGHTS=off to silence this", need / 2**20,
                       available / 2**20, 100 * MAX_MEMORY_SHARE)
        return result
    count, nbytes = pack_model(self.model, modules)
    setattr(self, STATS_ATTR, (count, nbytes))
    logger.info("CPU packed weights: %d linear/LM-head weights packed (%.0f MB more memory; %s; bit-identical "
                "outputs)", count, nbytes / 2**20, why)
    return result


def _packed_for(layer, device: torch.device, dtype: torch.dtype):
    """The layer's packed copy when it has one of the weight it holds now, for an input on `device` in `dtype`."""
    entry = getattr(layer, PACKED_ATTR, None)
    if entry is None or entry[1] is not layer.weight or device.type != "cpu" or dtype != entry[0].dtype:
        return None
    return entry[0]


def _nn_linear_forward(self, x):
    """torch.nn.Linear.forward of a packed instance: the packed product while it holds the packed weight."""
    packed = _packed_for(self, x.device, x.dtype)
    if packed is None:
        return torch.nn.functional.linear(x, self.weight, self.bias)
    return packed_linear.packed_linear(x, packed, self.bias)


def linear_apply(original, self, layer, x, bias=None):
    """AROUND UnquantizedLinearMethod.apply: the packed product where the layer has one (bit-identical)."""
    packed = _packed_for(layer, x.device, x.dtype)
    if packed is None:
        return original(self, layer, x, bias)
    return packed_linear.packed_linear(x, packed, bias)


def compute_lm_head(original, self, hidden_states, lm_head, embedding_bias=None, **kwargs):
    """AROUND LogitsProcessor._compute_lm_head: the plain `hidden @ lm_head.weight.T` branch through the packed
    copy (bit-identical); fp32 LM-head modes, RL on-policy mode, LoRA and biased heads keep the original."""
    packed = _packed_for(lm_head, hidden_states.device, lm_head.weight.dtype)  # the branch casts to that dtype
    if (packed is None or embedding_bias is not None or self.use_fp32_lm_head
            or getattr(self, "rl_on_policy_target", None) is not None):
        return original(self, hidden_states, lm_head, embedding_bias, **kwargs)
    return packed_linear.packed_linear(hidden_states.to(lm_head.weight.dtype), packed)


def packed_stats(runner) -> tuple[int, int] | None:
    """(modules packed, bytes) of a runner's model, None when it was not packed."""
    return getattr(runner, STATS_ATTR, None)
