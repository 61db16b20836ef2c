"""JetSpecDraftModel: SGLang's DFlashDraftModel with `dflash_config.causal_head` honoured.

SGLang 0.5.23 never reads `causal_head`: the attention type comes from `is_causal` + `layer_types`
(models/dflash.py:157-190), so an official JetSpec head (no `is_causal`) would run bidirectionally, silently out
of distribution. This class writes `is_causal` and `layer_types` from `causal_head` before the layers are built,
so every draft RadixAttention gets DECODER (block-causal in TARGET_VERIFY) for causal heads. The weights and
their loader are DFlashDraftModel's (same checkpoint format). Selected for JETSPEC by the `_config_draft_model`
hook in hooks.py.
"""
from __future__ import annotations

import logging

import torch
from sglang.srt.models.dflash import DFlashDraftModel

logger = logging.getLogger(__name__)

ARCHITECTURE = "JetSpecDraftModel"
DFLASH_ARCHITECTURES = ("DFlashDraftModel", "Qwen3DFlashDraftModel")


def force_attention_type(config) -> bool:
    """Set is_causal / layer_types on the HF config (and its text config) from dflash_config.causal_head."""
    dflash = getattr(config, "dflash_config", None) or {}
    causal = bool(dflash.get("causal_head", False))
    explicit = getattr(config.get_text_config(), "is_causal", None)
    if explicit is not None and bool(explicit) != causal:
        raise ValueError(f"draft head config: is_causal={explicit} contradicts dflash_config.causal_head={causal}; "
                         "remove is_causal from config.json (JETSPEC derives it from causal_head)")
    for cfg in {id(config): config, id(config.get_text_config()): config.get_text_config()}.values():
        cfg.is_causal = causal
        layer_types = getattr(cfg, "layer_types", None)
        if not layer_types:
            cfg.layer_types = ["full_attention"] * int(config.num_hidden_layers)
        elif any(t != "full_attention" for t in layer_types):
            raise ValueError(f"draft head config: layer_types={layer_types}; JETSPEC supports full-attention head "
                             "layers only")
    return causal


class JetSpecDraftModel(DFlashDraftModel):
    def __init__(self, config, quant_config=None, prefix: str = "") -> None:
        self.causal_head = force_attention_type(config)
        super().__init__(config, quant_config=quant_config, prefix=prefix)
        for layer in self.layers:
            if not torch.cuda.is_available():
                # table_qk_norm_rope_ is a Triton kernel gated on bf16 only, not on the device (dflash.py:383):
                # on CPU take SGLang's own torch path (apply_qk_norm + rotary_emb).
                layer.self_attn.use_table_qk_norm_rope = False
        logger.info("JetSpecDraftModel: %d layers, %s in-block attention", len(self.layers),
                    "block-causal" if self.causal_head else "bidirectional")

    def project_target_hidden(self, target_hidden: torch.Tensor) -> torch.Tensor:
        # The target's hidden states arrive in the target's dtype. args.resolve_dtype runs the head in it, but a
        # config override can still split them (fp16 target, bf16 head: F.linear fails with Half != BFloat16).
        # hidden_norm holds the model dtype even when fc is quantized.
        if target_hidden.dtype != self.hidden_norm.weight.dtype:
            target_hidden = target_hidden.to(self.hidden_norm.weight.dtype)
        return super().project_target_hidden(target_hidden)

    def forward(self, input_ids, positions, forward_batch, input_embeds=None, get_embedding=False,
                pp_proxy_tensors=None):
        if input_embeds is not None and input_embeds.dtype != self.fc.weight.dtype:
            # model_runner.py:1772 casts input_embeds to bf16; the hooks.py AFTER hook on _extend_forward_kwargs
            # keeps full precision for JETSPEC, this cast only fixes the dtype if that hook is absent.
            input_embeds = input_embeds.to(self.fc.weight.dtype)
        return super().forward(input_ids, positions, forward_batch, input_embeds=input_embeds,
                               get_embedding=get_embedding, pp_proxy_tensors=pp_proxy_tensors)


EntryClass = [JetSpecDraftModel]
