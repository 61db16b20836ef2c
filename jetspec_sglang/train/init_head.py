"""Head initialisation from the target: the draft layers start as copies of the target layers that follow the
deepest tap, reading that tap through `fc`.

Why: a randomly initialised DFlash-style head gets information into its MASK slots only through attention, and on
a CPU budget (hundreds of steps) it stays in the unigram basin (SmolLM2: 190 steps at the unigram KL). Started as
the target's own next layers, attention and MLPs already read the target's residual stream. The map is
  fc          = [0 ... 0, I] on the deepest tap (its output is the residual stream entering layer tap + 1)
  hidden_norm = input_layernorm of the first copied layer, so context K/V are that layer's own K/V
  layers[i]   = target layer tap + 1 + i (projections, MLP, both norms); norm = the target's final norm
  q_norm/k_norm (absent in Llama) = the typical per-head RMS of the copied layer's q/k on cached inputs, so the
              normalisation keeps the target's attention temperature on average.
Only the weights change: the head keeps the official architecture and checkpoint layout. Imports no sglang.
"""
from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from jetspec_sglang.draft_head import DraftHead

COPIED = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
          "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")

logger = logging.getLogger(__name__)


def copy_target_layers(head: DraftHead, target_layers: nn.ModuleList, final_norm_weight_M: torch.Tensor,
                       sample_taps_TF: torch.Tensor) -> list[int]:
    """Initialise `head` in place (see module docstring); returns the copied target layer ids.

    sample_taps_TF: cached fused taps of some positions (bf16 or fp32), used only for the q/k RMS.
    """
    cfg = head.config
    deepest = max(cfg.target_layer_ids)
    src = [deepest + 1 + i for i in range(cfg.num_hidden_layers)]
    if src[-1] >= len(target_layers):
        raise ValueError(f"--init target-layers: the {cfg.num_hidden_layers} draft layers would copy target layers "
                         f"{src}, but the target has {len(target_layers)}; tap a shallower deepest layer than "
                         f"{deepest} or use fewer draft layers")
    for name in COPIED:
        want, got = tuple(target_layers[src[0]].get_submodule(name).weight.shape), \
            tuple(head.layers[0].get_submodule(name).weight.shape)
        if want != got:
            raise ValueError(f"--init target-layers: draft {name} is {list(got)} but the target's is {list(want)}; "
                             f"give the head the target's geometry (--intermediate-size, --num-heads, "
                             f"--num-kv-heads, --head-dim) or use --init random")
    m, col = cfg.hidden_size, list(cfg.target_layer_ids).index(deepest)
    x_TM = sample_taps_TF[:, col * m:(col + 1) * m]
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.weight[:, col * m:(col + 1) * m] = torch.eye(m)
        head.hidden_norm.weight.copy_(target_layers[src[0]].input_layernorm.weight.float())
        head.norm.weight.copy_(final_norm_weight_M.float())
        for i, j in enumerate(src):
            draft, source = head.layers[i], target_layers[j]
            for name in COPIED:
                draft.get_submodule(name).weight.copy_(source.get_submodule(name).weight.float())
            h_TM = source.input_layernorm(x_TM.to(source.input_layernorm.weight.dtype))
            for proj, norm in ((source.self_attn.q_proj, draft.self_attn.q_norm),
                               (source.self_attn.k_proj, draft.self_attn.k_norm)):
                heads_THE = proj(h_TM).float().view(x_TM.shape[0], -1, cfg.head_dim)
                norm.weight.fill_(float(heads_THE.pow(2).mean(-1).sqrt().mean()))
    return src


def grow_head(head: DraftHead, extra: int, causal: bool | None = None) -> DraftHead:
    """A copy of `head` (fp32) with `extra` decoder layers appended after its last one, each starting as the
    identity on the residual stream: a copy of the last layer (its norms and q/k/v/gate/up projections read the
    stream that layer was trained on) with o_proj and down_proj zeroed. At step 0 the grown head's logits equal
    the original's exactly; the zeroed projections get gradient at once (their inputs are not zero), the copied
    ones from the next step. Why grow instead of training a deeper head from scratch: the CPU curve of a 2-layer
    head took ~30 M supervised positions to plateau; growing keeps that and adds capacity on top.
    `causal` given and different from the head's: the copy has that in-block attention (a causal head fine-tuned
    as bidirectional, or the reverse, starts from its weights; its exported config says what it was trained as).
    """
    cfg = head.config
    causal = cfg.causal_head if causal is None else causal
    if extra <= 0 and causal == cfg.causal_head:
        return head
    if causal != cfg.causal_head:
        logger.warning("the %s head is trained on as a %s one (--head-type %s keeps it as it was)",
                       _kind(cfg.causal_head), _kind(causal), "causal" if cfg.causal_head else "bidirectional")
    grown = DraftHead(dataclasses.replace(cfg, num_hidden_layers=cfg.num_hidden_layers + extra, causal_head=causal))
    state = {k: v.detach().float().clone() for k, v in head.state_dict().items()}
    last = cfg.num_hidden_layers - 1
    for i in range(cfg.num_hidden_layers, cfg.num_hidden_layers + extra):
        for k, v in list(state.items()):
            if k.startswith(f"layers.{last}."):
                new = f"layers.{i}." + k[len(f"layers.{last}."):]
                zero = new.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight"))
                state[new] = torch.zeros_like(v) if zero else v.clone()
    grown.load_state_dict(state, strict=True)
    return grown.float().train(head.training)


def _kind(causal: bool) -> str:
    return "block-causal" if causal else "bidirectional"
