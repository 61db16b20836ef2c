"""KV compaction of the target's HF `DynamicCache` after a tree round (jetspec-method.md 7.2, "HF reference").

After verify the cache holds the prefix [0, S) and the N tree nodes at slots S .. S + N - 1 (node i -> S + i).
Compaction keeps the prefix and the root + accepted nodes, moved in path order to [S, S + P), and drops the rest,
in every layer. Works on transformers 5.x `cache.layers[i].keys/values` [B, G, S, E]. No sglang import.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def kv_length(cache: DynamicCache) -> int:
    """S, the number of cached positions (every layer holds the same number)."""
    return int(cache.get_seq_length())


def check_compactable(cache: DynamicCache) -> None:
    """Raise unless every layer is a plain full-attention DynamicLayer (sliding/quantized layers drop rows)."""
    bad = [f"{i}: {type(layer).__name__}" for i, layer in enumerate(cache.layers)
           if type(layer) is not DynamicLayer]
    if bad:
        raise TypeError(f"compact_kv_cache: layers {bad} are not full-attention DynamicLayers; the reference "
                        f"engine supports full-attention targets only (no sliding-window / quantized caches)")


def compact_kv_cache(cache: DynamicCache, past_len: int, path_P: torch.Tensor) -> None:
    """Keep slots [0, past_len) and past_len + path_P (root first, path order) as [past_len, past_len + P); crop.

    path_P: int64 node indices of root + accepted nodes (path_P[0] = 0).
    past_len 7, 6 tree nodes (slots 7..12), path [0, 2, 5]: slots 7, 9, 12 -> 7, 8, 9; length 13 -> 10.
    """
    check_compactable(cache)
    keep = path_P.shape[0]
    src_P = past_len + path_P.to(torch.int64)
    for layer in cache.layers:
        total = layer.keys.shape[2]
        if past_len + keep > total or int(src_P.max()) >= total:
            raise ValueError(f"compact_kv_cache: past_len={past_len} + path {path_P.tolist()} is outside the "
                             f"cache length {total}; call it right after the verify forward of the tree")
        # index_select copies first, so overlapping source and destination slots are safe.
        layer.keys[:, :, past_len:past_len + keep] = layer.keys.index_select(2, src_P)
        layer.values[:, :, past_len:past_len + keep] = layer.values.index_select(2, src_P)
        layer.keys = layer.keys[:, :, :past_len + keep]
        layer.values = layer.values[:, :, :past_len + keep]
