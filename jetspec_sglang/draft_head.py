"""DraftHead: the JetSpec (DFlash-style) draft head as an nn.Module with the official `DFlashDraftModel` keys.

Owns the forward for the three callers: inference over an incremental per-layer context K/V cache
(`append_context` + `draft_logits`), training over many blocks in one masked forward (`forward_blocks` +
`build_block_mask`), and the naive twin `draft_hidden_ref`. Config and checkpoint files: `draft_head_config.py`.
Follows jetspec-method.md 2 (`hao-ai-lab/JetSpec` `jetspec/models/draft_head.py`). No sglang/triton import.
Local letters beside the package key: A blocks per sequence, Q = L + 1 rows per block, R = A * Q block rows,
F = len(target_layer_ids) * M fused tap width, K key rows (context + block).
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib

import torch
import torch.nn.functional as F
from torch import nn

from jetspec_sglang.draft_head_config import (DraftHeadConfig, DraftHeadError, check_against_target, read_checkpoint,
                                              write_checkpoint)

logger = logging.getLogger(__name__)


class RMSNorm(nn.Module):
    """Qwen3RMSNorm: statistics in fp32 (fp64 for fp64 input), then cast back and scale, as the official head."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))
        return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def rope_cos_sin(positions_BR: torch.Tensor, head_dim: int, theta: float,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Default (neox, rotate-half) RoPE tables cos_BRE, sin_BRE for int64 positions_BR, computed in `dtype`
    (fp32 like HF's Qwen3RotaryEmbedding; fp64 for an fp64 head)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions_BR.device).to(dtype) / head_dim)
    freqs_BRe = positions_BR.to(dtype)[..., None] * inv_freq  # e = E / 2
    emb_BRE = torch.cat([freqs_BRe, freqs_BRe], dim=-1)
    return emb_BRE.cos(), emb_BRE.sin()


def apply_rope(x_BHRE: torch.Tensor, cos_BRE: torch.Tensor, sin_BRE: torch.Tensor) -> torch.Tensor:
    cos, sin = cos_BRE[:, None].to(x_BHRE.dtype), sin_BRE[:, None].to(x_BHRE.dtype)
    x1, x2 = x_BHRE.chunk(2, dim=-1)
    return x_BHRE * cos + torch.cat([-x2, x1], dim=-1) * sin


class DraftAttention(nn.Module):
    """GQA attention whose keys/values are [context rows ; block rows]; only block rows are queries."""

    def __init__(self, config: DraftHeadConfig) -> None:
        super().__init__()
        m, e = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, e
        self.q_proj = nn.Linear(m, self.num_heads * e, bias=False)
        self.k_proj = nn.Linear(m, self.num_kv_heads * e, bias=False)
        self.v_proj = nn.Linear(m, self.num_kv_heads * e, bias=False)
        self.o_proj = nn.Linear(self.num_heads * e, m, bias=False)
        self.q_norm = RMSNorm(e, config.rms_norm_eps)  # per head, before RoPE
        self.k_norm = RMSNorm(e, config.rms_norm_eps)

    def project_kv(self, x_BRM: torch.Tensor, cos_BRE: torch.Tensor,
                   sin_BRE: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k_BGRE (k_proj -> k_norm -> RoPE) and v_BGRE for rows x_BRM."""
        b, r, _ = x_BRM.shape
        k_BGRE = self.k_norm(self.k_proj(x_BRM).view(b, r, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v_BGRE = self.v_proj(x_BRM).view(b, r, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rope(k_BGRE, cos_BRE, sin_BRE), v_BGRE

    def forward(self, x_BRM: torch.Tensor, cos_BRE: torch.Tensor, sin_BRE: torch.Tensor, ctx_k_BGSE: torch.Tensor,
                ctx_v_BGSE: torch.Tensor, allowed_B1RK: torch.Tensor | None) -> torch.Tensor:
        b, r, _ = x_BRM.shape
        q_BHRE = self.q_norm(self.q_proj(x_BRM).view(b, r, self.num_heads, self.head_dim)).transpose(1, 2)
        q_BHRE = apply_rope(q_BHRE, cos_BRE, sin_BRE)
        k_BGRE, v_BGRE = self.project_kv(x_BRM, cos_BRE, sin_BRE)
        k_BGKE = torch.cat([ctx_k_BGSE.to(k_BGRE.dtype), k_BGRE], dim=2)
        v_BGKE = torch.cat([ctx_v_BGSE.to(v_BGRE.dtype), v_BGRE], dim=2)
        out_BHRE = F.scaled_dot_product_attention(q_BHRE, k_BGKE.to(q_BHRE.dtype), v_BGKE.to(q_BHRE.dtype),
                                                  attn_mask=allowed_B1RK, enable_gqa=True)
        return self.o_proj(out_BHRE.transpose(1, 2).reshape(b, r, self.num_heads * self.head_dim))


class DraftMLP(nn.Module):
    def __init__(self, config: DraftHeadConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x_BRM: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x_BRM)) * self.up_proj(x_BRM))


class DraftDecoderLayer(nn.Module):
    def __init__(self, config: DraftHeadConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = DraftAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = DraftMLP(config)

    def forward(self, x_BRM, cos_BRE, sin_BRE, ctx_k_BGSE, ctx_v_BGSE, allowed_B1RK):
        x_BRM = x_BRM + self.self_attn(self.input_layernorm(x_BRM), cos_BRE, sin_BRE, ctx_k_BGSE, ctx_v_BGSE,
                                       allowed_B1RK)
        return x_BRM + self.mlp(self.post_attention_layernorm(x_BRM))


@dataclasses.dataclass
class DraftContextCache:
    """Per-layer K/V of the projected context rows, appended once and never recomputed.

    keys[i] / values[i]: [B, G, S, E] for draft layer i (RoPE applied at positions 0..S-1). Every row of the batch
    has the same length S: batch 1 is the main case; B > 1 needs requests of equal context length (no padding mask).
    The block rows are never stored: a draft forward leaves the cache unchanged.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        """S, the number of cached context rows."""
        return int(self.keys[0].shape[2])

    @property
    def batch_size(self) -> int:
        return int(self.keys[0].shape[0])

    def crop(self, length: int) -> None:
        """Keep the first `length` context rows (roll back rows appended after them)."""
        if not 0 <= length <= self.length:
            raise DraftHeadError(f"DraftContextCache.crop: length={length} outside [0, {self.length}]; "
                             f"crop can only shorten the cache")
        self.keys = [k[:, :, :length] for k in self.keys]
        self.values = [v[:, :, :length] for v in self.values]


class DraftHead(nn.Module):
    """The official draft head: `layers`, `norm`, `fc`, `hidden_norm`; no embedding and no lm_head of its own."""

    def __init__(self, config: DraftHeadConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([DraftDecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.fc = nn.Linear(config.fused_width, config.hidden_size, bias=False)
        self.hidden_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.__dict__["_target_modules"] = None  # (embed_tokens, lm_head) of the target, held by reference only

    def attach_target(self, embed_tokens: nn.Module, lm_head: nn.Module) -> None:
        """Borrow the target's embedding and lm_head (not registered: not moved, trained or saved with the head)."""
        width = embed_tokens.weight.shape[1]
        if width != self.config.hidden_size or lm_head.weight.shape[1] != self.config.hidden_size:
            raise DraftHeadError(f"attach_target: target embedding width {width} / lm_head input "
                                 f"{lm_head.weight.shape[1]} != head hidden_size {self.config.hidden_size}; "
                                 f"attach the target the head was made for")
        self.__dict__["_target_modules"] = (embed_tokens, lm_head)

    def _target(self) -> tuple[nn.Module, nn.Module]:
        if self._target_modules is None:
            raise DraftHeadError("DraftHead has no target embedding/lm_head; call head.attach_target("
                                 "target.get_input_embeddings(), target.get_output_embeddings()) first")
        return self._target_modules

    def project_context(self, taps_BSF: torch.Tensor) -> torch.Tensor:
        """context_BSM = hidden_norm(fc(taps)); taps_BSF are the concatenated target-layer outputs."""
        if taps_BSF.shape[-1] != self.config.fused_width:
            raise DraftHeadError(f"project_context: taps width {taps_BSF.shape[-1]} != len(target_layer_ids) x "
                                 f"hidden = {self.config.fused_width}; tap layers {list(self.config.target_layer_ids)}")
        return self.hidden_norm(self.fc(taps_BSF.to(self.fc.weight.dtype)))

    def _rope(self, positions_BR: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = torch.promote_types(self.fc.weight.dtype, torch.float32)
        return rope_cos_sin(positions_BR, self.config.head_dim, self.config.rope_theta, dtype)

    def _layers(self, x_BRM, positions_BR, context_kv, allowed_B1RK) -> torch.Tensor:
        cos_BRE, sin_BRE = self._rope(positions_BR)
        for i, layer in enumerate(self.layers):
            x_BRM = layer(x_BRM, cos_BRE, sin_BRE, *context_kv(i), allowed_B1RK)
        return self.norm(x_BRM)

    # --- inference: incremental context cache -------------------------------------------------------------------
    def new_cache(self, batch_size: int = 1) -> DraftContextCache:
        """An empty context cache for `batch_size` requests (head dtype and device)."""
        g, e = self.config.num_key_value_heads, self.config.head_dim
        empty = [self.fc.weight.new_zeros(batch_size, g, 0, e) for _ in self.layers]
        return DraftContextCache(keys=empty, values=list(empty))

    def append_context(self, cache: DraftContextCache, taps_BSF: torch.Tensor) -> None:
        """Project the taps of newly committed tokens and append their K/V at positions [S, S + rows) per layer."""
        if taps_BSF.shape[0] != cache.batch_size:
            raise DraftHeadError(f"append_context: taps batch {taps_BSF.shape[0]} != cache batch "
                                 f"{cache.batch_size}; make the cache with head.new_cache(batch_size)")
        b, n, _ = taps_BSF.shape
        context_BSM = self.project_context(taps_BSF)
        positions_BS = (cache.length + torch.arange(n, device=taps_BSF.device)).expand(b, n)
        cos_BSE, sin_BSE = self._rope(positions_BS)
        for i, layer in enumerate(self.layers):
            k_BGSE, v_BGSE = layer.self_attn.project_kv(context_BSM, cos_BSE, sin_BSE)
            cache.keys[i] = torch.cat([cache.keys[i], k_BGSE.to(cache.keys[i].dtype)], dim=2)
            cache.values[i] = torch.cat([cache.values[i], v_BGSE.to(cache.values[i].dtype)], dim=2)

    def forward_block(self, cache: DraftContextCache, block_embeds_BQM: torch.Tensor,
                      positions_BQ: torch.Tensor | None = None) -> torch.Tensor:
        """Final-normed hidden_BQM of the block against [cached context ; block]; default positions [S, S + Q)."""
        b, q, _ = block_embeds_BQM.shape
        s = cache.length
        if b != cache.batch_size:
            raise DraftHeadError(f"forward_block: block batch {b} != cache batch {cache.batch_size}")
        if positions_BQ is None:
            positions_BQ = (s + torch.arange(q, device=block_embeds_BQM.device)).expand(b, q)
        allowed = None
        if self.config.causal_head:  # query slot i sees every context key and block keys <= i
            anchors_BA = torch.full((b, 1), s, dtype=torch.long, device=block_embeds_BQM.device)
            allowed = build_block_mask(anchors_BA, s, q, causal=True)
        x_BQM = block_embeds_BQM.to(self.fc.weight.dtype)
        return self._layers(x_BQM, positions_BQ, lambda i: (cache.keys[i], cache.values[i]), allowed)

    @torch.no_grad()
    def draft_logits(self, cache: DraftContextCache, anchor_ids_B: torch.Tensor,
                     block_size: int | None = None) -> torch.Tensor:
        """draft_logits_BLV: row d-1 is the depth-d distribution of block [anchor, MASK x L] at [S, S + L + 1)."""
        embed_tokens, lm_head = self._target()
        block_ids_BQ = make_block_ids(anchor_ids_B[:, None], self.config.mask_token_id,
                                      block_size or self.config.block_size)
        hidden_BQM = self.forward_block(cache, embed_tokens(block_ids_BQ))
        return lm_head(hidden_BQM[:, 1:].to(lm_head.weight.dtype))

    # --- training: many blocks in one forward -------------------------------------------------------------------
    def forward_blocks(self, context_BSM: torch.Tensor, block_embeds_BRM: torch.Tensor, positions_BR: torch.Tensor,
                       allowed_B1RK: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden_BRM for A blocks of Q rows per sequence (R = A * Q), keys [context ; all blocks].

        context_BSM: `project_context` of the whole sequence's taps, RoPE positions 0..S-1.
        positions_BR: int64, anchor_a + k for row (a, k) (`block_positions`).
        allowed_B1RK: bool, K = S + R (`build_block_mask`).
        """
        s, r = context_BSM.shape[1], block_embeds_BRM.shape[1]
        if allowed_B1RK.shape[-2:] != (r, s + r) or positions_BR.shape != block_embeds_BRM.shape[:2]:
            raise DraftHeadError(f"forward_blocks: mask {list(allowed_B1RK.shape)} / positions "
                                 f"{list(positions_BR.shape)} do not fit S={s} context rows and R={r} block rows; "
                                 f"build them with build_block_mask(anchors, S, Q, causal) and block_positions")
        positions_BS = torch.arange(s, device=context_BSM.device).expand(context_BSM.shape[0], s)
        cos_BSE, sin_BSE = self._rope(positions_BS)
        ctx_kv = lambda i: self.layers[i].self_attn.project_kv(context_BSM, cos_BSE, sin_BSE)  # noqa: E731
        return self._layers(block_embeds_BRM.to(self.fc.weight.dtype), positions_BR, ctx_kv, allowed_B1RK)

    def save(self, path: str | pathlib.Path) -> None:
        """Write config.json + model.safetensors in the official layout."""
        save_draft_head(self, path)


def make_block_ids(anchor_ids_BA: torch.Tensor, mask_token_id: int, block_size: int) -> torch.Tensor:
    """block_ids_BR (int64): each anchor followed by L = block_size - 1 MASK ids. [[7, 9]], 0, 3 -> [[7,0,0,9,0,0]]."""
    b, a = anchor_ids_BA.shape
    ids_BAQ = torch.full((b, a, block_size), mask_token_id, dtype=torch.long, device=anchor_ids_BA.device)
    ids_BAQ[:, :, 0] = anchor_ids_BA
    return ids_BAQ.reshape(b, a * block_size)


def block_positions(anchors_BA: torch.Tensor, block_size: int) -> torch.Tensor:
    """positions_BR (int64): row (a, k) sits at anchor_a + k. anchors [[4, 9]], Q 2 -> [[4, 5, 9, 10]]."""
    offsets_Q = torch.arange(block_size, device=anchors_BA.device)
    return (anchors_BA[:, :, None] + offsets_Q).reshape(anchors_BA.shape[0], -1)


def build_block_mask(anchors_BA: torch.Tensor, context_len: int, block_size: int, causal: bool) -> torch.Tensor:
    """allowed_B1RK (bool, K = S + R): block row (a, k) sees context keys j < anchor_a and its own block's keys
    with offset <= k (any offset if not causal); never another block. Inference is A = 1 with anchor = S.

    Example: anchors [[2]], S 3, Q 2, causal -> rows [[1,1,0, 1,0], [1,1,0, 1,1]].
    """
    b, a = anchors_BA.shape
    device = anchors_BA.device
    key_j = torch.arange(context_len, device=device)
    ctx_BAJ = key_j[None, None] < anchors_BA[:, :, None]
    ctx_BRS = ctx_BAJ[:, :, None, :].expand(b, a, block_size, context_len).reshape(b, a * block_size, context_len)
    block_R = torch.arange(a * block_size, device=device)
    same_block_RR = (block_R[:, None] // block_size) == (block_R[None, :] // block_size)
    if causal:
        same_block_RR &= (block_R[None, :] % block_size) <= (block_R[:, None] % block_size)
    allowed_BRK = torch.cat([ctx_BRS, same_block_RR.expand(b, -1, -1)], dim=-1)
    return allowed_BRK[:, None]


def draft_hidden_ref(head: DraftHead, context_BSM: torch.Tensor, block_embeds_BRM: torch.Tensor,
                     positions_BR: torch.Tensor, allowed_BRK: torch.Tensor,
                     context_positions_BS: torch.Tensor | None = None) -> torch.Tensor:
    """Slow twin of the head forward: explicit mask, plain softmax, no cache. Returns final-normed hidden_BRM."""
    cfg = head.config
    b, s, _ = context_BSM.shape
    if context_positions_BS is None:
        context_positions_BS = torch.arange(s).expand(b, s)

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps))

    def rope(x_BRHE, pos_BR):  # rotate pairs (d, d + E/2) by pos * theta^(-2d/E)
        half = cfg.head_dim // 2
        angle_BRd = pos_BR[..., None].double() * cfg.rope_theta ** (-torch.arange(half).double() * 2 / cfg.head_dim)
        cos, sin = angle_BRd.cos()[:, :, None].to(x_BRHE.dtype), angle_BRd.sin()[:, :, None].to(x_BRHE.dtype)
        x1, x2 = x_BRHE[..., :half], x_BRHE[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    x = block_embeds_BRM
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    for layer in head.layers:
        at = layer.self_attn
        h = rms(x, layer.input_layernorm.weight)
        heads = lambda t, n: t.view(b, t.shape[1], n, cfg.head_dim)  # noqa: E731
        q = rope(rms(heads(h @ at.q_proj.weight.T, cfg.num_attention_heads), at.q_norm.weight), positions_BR)
        kv_in = torch.cat([context_BSM, h], dim=1)
        kv_pos = torch.cat([context_positions_BS, positions_BR], dim=1)
        k = rope(rms(heads(kv_in @ at.k_proj.weight.T, cfg.num_key_value_heads), at.k_norm.weight), kv_pos)
        v = heads(kv_in @ at.v_proj.weight.T, cfg.num_key_value_heads)
        k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)  # GQA: head h uses kv h // group
        scores_BHRK = torch.einsum("brhe,bkhe->bhrk", q, k) / cfg.head_dim ** 0.5
        probs = scores_BHRK.masked_fill(~allowed_BRK[:, None], float("-inf")).softmax(-1)
        attn = torch.einsum("bhrk,bkhe->brhe", probs, v).reshape(b, -1, cfg.num_attention_heads * cfg.head_dim)
        x = x + attn @ at.o_proj.weight.T
        h = rms(x, layer.post_attention_layernorm.weight)
        mlp = layer.mlp
        x = x + (F.silu(h @ mlp.gate_proj.weight.T) * (h @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T
    return rms(x, head.norm.weight)


def init_draft_head(config: DraftHeadConfig, seed: int = 0, std: float = 0.02) -> DraftHead:
    """A randomly initialised fp32 head (linears ~ N(0, std), norms = 1), reproducible from `seed`."""
    head = DraftHead(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return head


def load_draft_head(path: str | pathlib.Path, *, target_config=None, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> DraftHead:
    """Load an official-layout head (config.json + *.safetensors, optional `model.` prefix); check it fits
    `target_config` (HF config of the target) when given."""
    config, tensors = read_checkpoint(path)
    if target_config is not None:
        check_against_target(config, target_config)
    with torch.device("meta"):
        head = DraftHead(config)
    head.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in tensors.items()}, strict=True, assign=True)
    logger.info("loaded draft head from %s: %d layers, block %d, taps %s, causal_head=%s", path,
                config.num_hidden_layers, config.block_size, list(config.target_layer_ids), config.causal_head)
    return head.eval()


def save_draft_head(head: DraftHead, path: str | pathlib.Path) -> None:
    write_checkpoint(path, head.config, head.state_dict())
