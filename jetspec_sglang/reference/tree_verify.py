"""Tree verification on an HF transformers target: one forward over all N tree nodes (jetspec-method.md 5.1).

Node i is fed at RoPE position S + depth_i and written to cache slot S + i; it attends to every prefix slot and
to its own ancestors (itself included), through an additive 4-D float mask in the target dtype, which both the
SDPA and the eager attention of transformers 5.x accept as given. Returns the logits and the target taps of
every node. No sglang import.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

from jetspec_sglang import ops
from jetspec_sglang.mask import tree_positions
from jetspec_sglang.taps import forward_with_taps

FULL_ATTENTION = "full_attention"


def check_target(target: nn.Module) -> None:
    """Raise unless the target is a full-attention decoder the tree mask fully describes."""
    config = target.config.get_text_config() if hasattr(target.config, "get_text_config") else target.config
    kinds = set(getattr(config, "layer_types", None) or [FULL_ATTENTION])
    if kinds != {FULL_ATTENTION}:
        raise ValueError(f"target {type(target).__name__}: layer_types {sorted(kinds)}; the reference engine "
                         f"verifies trees on full-attention targets only (sliding-window layers would need a "
                         f"per-node prefix window, jetspec-method.md 5.2)")
    if config._attn_implementation not in ("sdpa", "eager"):
        raise ValueError(f"target attention {config._attn_implementation!r} cannot take a 4-D tree mask; load the "
                         f"target with attn_implementation='sdpa' or 'eager'")


def tree_attention_mask(parents_BN: torch.Tensor, past_len: int, dtype: torch.dtype,
                        max_depth: int | None = None) -> torch.Tensor:
    """Additive mask_B1NK (K = past_len + N, `dtype`): 0 where visible, dtype min elsewhere.

    parents [-1, 0, 0, 1], past_len 2 -> visible rows [1,1, 1,0,0,0], [1,1, 1,1,0,0], [1,1, 1,0,1,0],
    [1,1, 1,1,0,1].
    """
    B, N = parents_BN.shape
    ancestors_BNN = ops.build_ancestor_mask(parents_BN, max_depth)
    prefix_BNS = torch.ones(B, N, past_len, dtype=torch.bool, device=parents_BN.device)
    visible_BNK = torch.cat([prefix_BNS, ancestors_BNN], dim=-1)
    zero = torch.zeros((), dtype=dtype, device=parents_BN.device)
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=parents_BN.device)
    return torch.where(visible_BNK, zero, blocked)[:, None]


@torch.no_grad()
def verify_tree(target: nn.Module, layer_ids: list[int] | tuple[int, ...], cache: DynamicCache,
                tokens_BN: torch.Tensor, parents_BN: torch.Tensor, depth_BN: torch.Tensor,
                max_depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the target over the tree; return (logits_BNV, taps_BNF). The cache grows by N slots (S + i = node i).

    tokens_BN / parents_BN / depth_BN int64 as in DraftTree (node 0 = root = anchor); max_depth = L.
    """
    past_len = int(cache.get_seq_length())
    dtype = target.get_input_embeddings().weight.dtype
    mask_B1NK = tree_attention_mask(parents_BN, past_len, dtype, max_depth)
    positions_BN = tree_positions(depth_BN, torch.full((tokens_BN.shape[0],), past_len, device=tokens_BN.device))
    out, taps_BNF = forward_with_taps(target, layer_ids, tokens_BN, attention_mask=mask_B1NK,
                                      position_ids=positions_BN, past_key_values=cache, use_cache=True)
    return out.logits, taps_BNF
