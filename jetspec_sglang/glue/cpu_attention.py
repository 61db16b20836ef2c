"""TARGET_VERIFY for SGLang's torch_native attention backend (CPU), installed as an AROUND hook on
TorchNativeAttnBackend.forward_extend. Other forward modes go to the original untouched.

Contract (shared docs dflash-on-cpu.md Q2.4): seq_lens = committed prefix S_b (draft tokens excluded); every
request has n = spec_info.draft_token_num query rows, request-major; out_cache_loc = the n slots, already in
req_to_token[row, S_b : S_b + n]. Request b's query i sits at position S_b + i and sees keys
req_to_token[row, :S_b + n] through a boolean [n, S_b + n] mask:
  * custom_mask set (a tree): the FULL layout - per request n x (S_b + n) row-major, requests concatenated;
    prefix columns visible, tree columns from the mask;
  * custom_mask None: causal (key j <= S_b + i) for DECODER layers, all visible for ENCODER_ONLY layers;
  * a sliding window additionally requires j >= S_b + i - window.
Masks are built once per forward and reused by every layer.
"""
from __future__ import annotations

import torch
from sglang.srt.layers.radix_attention import AttentionType
from sglang.srt.mem_cache.memory_pool import KVWriteLoc
from torch.nn.functional import scaled_dot_product_attention

_MASK_CACHE_ATTR = "_jetspec_verify_masks"


def verify_masks(forward_batch, n: int, causal: bool, window: int) -> list[torch.Tensor]:
    """Per-request bool masks [n, S_b + n] for this forward (cached on the ForwardBatch per (causal, window))."""
    cache = getattr(forward_batch, _MASK_CACHE_ATTR, None)
    if cache is None:
        cache = {}
        setattr(forward_batch, _MASK_CACHE_ATTR, cache)
    key = (causal, window)
    if key in cache:
        return cache[key]
    prefix = [int(s) for s in forward_batch.seq_lens.tolist()]
    custom = getattr(forward_batch.spec_info, "custom_mask", None)
    masks, offset = [], 0
    for s in prefix:
        q_pos = torch.arange(s, s + n)[:, None]
        k_pos = torch.arange(s + n)[None, :]
        if custom is not None:
            mask = custom[offset: offset + n * (s + n)].view(n, s + n).to(torch.bool).clone()
            mask[:, :s] = True
            offset += n * (s + n)
        elif causal:
            mask = k_pos <= q_pos
        else:
            mask = torch.ones(n, s + n, dtype=torch.bool)
        if window > -1:
            mask &= k_pos >= q_pos - window
        masks.append(mask)
    cache[key] = masks
    return masks


def forward_extend_target_verify(original, self, q, k, v, layer, forward_batch, save_kv_cache=True, *args, **kwargs):
    """AROUND hook: TARGET_VERIFY through per-request SDPA with the contract's mask; anything else -> original."""
    if not forward_batch.forward_mode.is_target_verify():
        return original(self, q, k, v, layer, forward_batch, save_kv_cache, *args, **kwargs)
    if layer.is_cross_attention:
        raise NotImplementedError("JETSPEC CPU verify: cross-attention layers are not supported")
    if save_kv_cache and k is not None and v is not None:
        self.token_to_kv_pool.set_kv_buffer(layer, KVWriteLoc(forward_batch.out_cache_loc, self.swa_out_cache_loc),
                                            k, v)
    n = int(forward_batch.spec_info.draft_token_num)
    H, G = layer.tp_q_head_num, layer.tp_k_head_num
    q_THE = q.view(-1, H, layer.qk_head_dim)
    o = q.new_empty((q_THE.shape[0], H * layer.v_head_dim))
    o_THE = o.view(-1, H, layer.v_head_dim)
    causal = layer.attn_type != AttentionType.ENCODER_ONLY
    window = layer.sliding_window_size if (causal and layer.sliding_window_size is not None) else -1
    masks = verify_masks(forward_batch, n, causal, int(window))
    k_cache = self.token_to_kv_pool.get_key_buffer(layer.layer_id)
    v_cache = self.token_to_kv_pool.get_value_buffer(layer.layer_id)
    rows = forward_batch.req_pool_indices.tolist()
    for b, (row, mask) in enumerate(zip(rows, masks)):
        slots = self.req_to_token_pool.req_to_token[row, : mask.shape[1]]
        k_GSE = k_cache[slots].movedim(0, 1).to(q.dtype)
        v_GSE = v_cache[slots].movedim(0, 1).to(q.dtype)
        q_HnE = q_THE[b * n: (b + 1) * n].movedim(0, 1)
        out = scaled_dot_product_attention(q_HnE[None], k_GSE[None], v_GSE[None], attn_mask=mask[None, None],
                                           scale=layer.scaling, enable_gqa=H != G)
        o_THE[b * n: (b + 1) * n] = out[0].movedim(0, 1)
    return o
