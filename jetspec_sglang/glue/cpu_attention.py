"""TARGET_VERIFY for SGLang's torch_native attention backend (CPU), installed as an AROUND hook on
TorchNativeAttnBackend.forward_extend. Other forward modes go to the original untouched.

Contract (shared docs dflash-on-cpu.md Q2.4): seq_lens = committed prefix S_b (draft tokens excluded); every
request has n = spec_info.draft_token_num query rows, request-major; out_cache_loc = the n slots, already in
req_to_token[row, S_b : S_b + n]. Request b's query i sits at position S_b + i and sees keys
req_to_token[row, :S_b + n]:
  * custom_mask set (a tree): prefix columns visible, tree columns from the mask, given either as
    - SGLang's FULL layout: per request n x (S_b + n) row-major, requests concatenated (what the GPU backends
      read; its prefix columns are all True), or
    - the compact layout: per request the n x n tree block only, [bs, n, n] flattened (what the JETSPEC worker
      passes on CPU, so no prefix-wide mask is built every step). The two are told apart by size; they coincide
      when every S_b is 0;
  * custom_mask None: causal (key j <= S_b + i) for DECODER layers, all visible for ENCODER_ONLY layers;
  * a sliding window additionally requires j >= S_b + i - window.
One batched SDPA per layer: the requests' keys are gathered [bs, K = max S_b + n] (padding masked out), and the
slot table and the additive mask are built once per forward (per causal/window/dtype) and reused by every layer.
"""
from __future__ import annotations

import torch
from sglang.srt.layers.radix_attention import AttentionType
from sglang.srt.mem_cache.memory_pool import KVWriteLoc
from torch.nn.functional import scaled_dot_product_attention

_PLAN_CACHE_ATTR = "_jetspec_verify_plans"


def tree_block(custom: torch.Tensor, prefix_B: torch.Tensor, n: int) -> torch.Tensor:
    """The tree columns of a custom mask, bool [bs, n, n], from the compact or the FULL layout."""
    bs = prefix_B.shape[0]
    if custom.numel() == bs * n * n:
        return custom.view(bs, n, n).to(torch.bool)
    row_len_B = prefix_B + n
    start_B = n * (torch.cumsum(row_len_B, 0) - row_len_B)
    idx_n = torch.arange(n)
    flat_Bnn = (start_B[:, None, None] + idx_n[None, :, None] * row_len_B[:, None, None]
                + prefix_B[:, None, None] + idx_n[None, None, :])
    return custom[flat_Bnn].to(torch.bool)


def verify_plan(forward_batch, req_to_token: torch.Tensor, n: int, causal: bool, window: int,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(slots_BK: KV-pool slot of each key column, additive mask [bs, 1, n, K] in `dtype` or None when every key
    is visible). Cached on the ForwardBatch per (causal, window, dtype)."""
    cache = getattr(forward_batch, _PLAN_CACHE_ATTR, None)
    if cache is None:
        cache = {}
        setattr(forward_batch, _PLAN_CACHE_ATTR, cache)
    key = (causal, window, dtype)
    if key in cache:
        return cache[key]
    prefix_B = forward_batch.seq_lens.to(device="cpu", dtype=torch.int64)
    rows_B = forward_batch.req_pool_indices.to(device="cpu", dtype=torch.int64)
    bs = prefix_B.shape[0]
    K = int(prefix_B.max()) + n
    col_K = torch.arange(K)
    end_B = prefix_B + n
    inside_BK = col_K[None, :] < end_B[:, None]
    slots_BK = req_to_token[rows_B[:, None], torch.where(inside_BK, col_K[None, :], 0)]
    q_pos_Bn = prefix_B[:, None] + torch.arange(n)
    custom = getattr(forward_batch.spec_info, "custom_mask", None)
    if custom is not None:
        rel_BK = col_K[None, :] - prefix_B[:, None]  # tree column index (negative: prefix)
        tree_BnK = tree_block(custom, prefix_B, n).gather(2, rel_BK.clamp(0, n - 1)[:, None, :].expand(bs, n, K))
        visible = (rel_BK < 0)[:, None, :] | (tree_BnK & inside_BK[:, None, :])
    elif causal:
        visible = col_K[None, None, :] <= q_pos_Bn[:, :, None]
    else:
        visible = inside_BK[:, None, :].expand(bs, n, K)
    if window > -1:
        visible = visible & (col_K[None, None, :] >= q_pos_Bn[:, :, None] - window)
    mask = None
    if not bool(visible.all()):
        mask = torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, float("-inf"))[:, None]
    cache[key] = (slots_BK, mask)
    return cache[key]


def forward_extend_target_verify(original, self, q, k, v, layer, forward_batch, save_kv_cache=True, *args, **kwargs):
    """AROUND hook: TARGET_VERIFY through one batched SDPA with the contract's mask; anything else -> original."""
    if not forward_batch.forward_mode.is_target_verify():
        return original(self, q, k, v, layer, forward_batch, save_kv_cache, *args, **kwargs)
    if layer.is_cross_attention:
        raise NotImplementedError("JETSPEC CPU verify: cross-attention layers are not supported")
    if save_kv_cache and k is not None and v is not None:
        self.token_to_kv_pool.set_kv_buffer(layer, KVWriteLoc(forward_batch.out_cache_loc, self.swa_out_cache_loc),
                                            k, v)
    n = int(forward_batch.spec_info.draft_token_num)
    H, G, E, Ev = layer.tp_q_head_num, layer.tp_k_head_num, layer.qk_head_dim, layer.v_head_dim
    causal = layer.attn_type != AttentionType.ENCODER_ONLY
    window = layer.sliding_window_size if (causal and layer.sliding_window_size is not None) else -1
    slots_BK, mask = verify_plan(forward_batch, self.req_to_token_pool.req_to_token, n, causal, int(window),
                                 q.dtype)
    bs, K = slots_BK.shape
    slots_T = slots_BK.view(-1)  # index_select on the flat slots: ~2-4x faster here than buffer[slots_BK]
    k_BGKE = (self.token_to_kv_pool.get_key_buffer(layer.layer_id).index_select(0, slots_T).view(bs, K, G, E)
              .to(q.dtype).transpose(1, 2))
    v_BGKE = (self.token_to_kv_pool.get_value_buffer(layer.layer_id).index_select(0, slots_T).view(bs, K, G, Ev)
              .to(q.dtype).transpose(1, 2))
    q_BHnE = q.view(bs, n, H, E).transpose(1, 2)
    out_BHnE = scaled_dot_product_attention(q_BHnE, k_BGKE, v_BGKE, attn_mask=mask, scale=layer.scaling,
                                            enable_gqa=H != G)
    return out_BHnE.transpose(1, 2).reshape(bs * n, H * Ev)
