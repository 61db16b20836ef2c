"""Batched decoding of a Llama/Qwen3 HF target with continuous refill, for regenerating training responses.

`decode_stream` keeps `num_slots` requests in flight over one preallocated KV cache per layer; when a request stops
(eos or `max_new_tokens`) its slot is refilled with the next prompt at once, so the batch stays full and no compute is
spent on padding or on finished rows. It reuses the HF model's own modules (embedding, norms, projections, MLPs,
lm_head) and owns only the attention bookkeeping, because on CPU HF `generate` spends most of a step copying the
cache (`DynamicCache` concatenation, `repeat_kv` for GQA). Slow twin: HF `generate` (tests/test_train.py checks
greedy equality). Imports no sglang.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from jetspec_sglang.taps import decoder_layers

NO_REQUEST = -1  # slot_request_B entry of an empty slot


@dataclasses.dataclass(frozen=True)
class Request:
    key: str  # the caller's id for this request
    prompt_ids: list[int]
    temperature: float = 0.0  # <= 0: greedy


@dataclasses.dataclass(frozen=True)
class Completion:
    key: str  # the caller's request key
    prompt_ids: list[int]
    response_ids: list[int]  # generated tokens, eos included when it was produced
    finished: bool  # True: stopped at eos; False: cut at max_new_tokens


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Default (neox, rotate-half) RoPE; cos/sin broadcast over the head axis."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class SlotDecoder:
    """Per-slot KV cache (keys [B, G, E, S_max], values [B, G, S_max, E]) per layer and the two forwards that fill it (prefill one slot, decode all)."""

    def __init__(self, model: nn.Module, num_slots: int, max_len: int) -> None:
        self.model, self.layers = model, decoder_layers(model)
        base = model.model
        self.embed, self.norm, self.rotary = base.embed_tokens, base.norm, base.rotary_emb
        self.lm_head = model.get_output_embeddings()
        attn = self.layers[0].self_attn
        cfg = model.config
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.num_heads, self.num_kv = int(cfg.num_attention_heads), int(cfg.num_key_value_heads)
        self.scale = getattr(attn, "scaling", self.head_dim ** -0.5)
        dtype = self.embed.weight.dtype
        # Keys are stored transposed, [B, G, E, S_max], so both attention matmuls read plain row-major slices.
        self.keys = [torch.zeros(num_slots, self.num_kv, self.head_dim, max_len, dtype=dtype) for _ in self.layers]
        self.values = [torch.zeros(num_slots, self.num_kv, max_len, self.head_dim, dtype=dtype) for _ in self.layers]
        self.lens_B = torch.zeros(num_slots, dtype=torch.long)  # tokens already in each slot's cache
        self.max_len = max_len

    def _qkv(self, attn: nn.Module, h_BQM: torch.Tensor, positions_BQ: torch.Tensor):
        b, q, _ = h_BQM.shape
        q_BQHE = attn.q_proj(h_BQM).view(b, q, self.num_heads, self.head_dim)
        k_BQGE = attn.k_proj(h_BQM).view(b, q, self.num_kv, self.head_dim)
        v_BQGE = attn.v_proj(h_BQM).view(b, q, self.num_kv, self.head_dim)
        if hasattr(attn, "q_norm"):  # Qwen3: per-head RMSNorm before RoPE
            q_BQHE, k_BQGE = attn.q_norm(q_BQHE), attn.k_norm(k_BQGE)
        cos_BQE, sin_BQE = self.rotary(h_BQM, positions_BQ)
        cos_BQ1E, sin_BQ1E = cos_BQE[:, :, None], sin_BQE[:, :, None]
        return _rotate(q_BQHE, cos_BQ1E, sin_BQ1E), _rotate(k_BQGE, cos_BQ1E, sin_BQ1E), v_BQGE

    def _finish(self, x_BQM: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(x_BQM)).float()

    @torch.inference_mode()
    def prefill(self, slot: int, prompt_ids: list[int]) -> torch.Tensor:
        """Write the prompt's K/V into `slot` (positions 0..P-1); return the fp32 logits_V after the last token."""
        p = len(prompt_ids)
        if not 0 < p < self.max_len:
            raise ValueError(f"prefill: prompt length {p} must be in [1, max_len={self.max_len})")
        ids_1P = torch.tensor([prompt_ids], dtype=torch.long)
        positions_1P = torch.arange(p)[None]
        x = self.embed(ids_1P)
        group = self.num_heads // self.num_kv
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            q_1PHE, k_1PGE, v_1PGE = self._qkv(attn, layer.input_layernorm(x), positions_1P)
            self.keys[i][slot, :, :, :p] = k_1PGE[0].permute(1, 2, 0)
            self.values[i][slot, :, :p] = v_1PGE[0].transpose(0, 1)
            k_1HPE = k_1PGE.transpose(1, 2).repeat_interleave(group, dim=1)  # GQA: head h reads kv h // group
            v_1HPE = v_1PGE.transpose(1, 2).repeat_interleave(group, dim=1)
            o_1HPE = F.scaled_dot_product_attention(q_1PHE.transpose(1, 2), k_1HPE, v_1HPE, is_causal=True,
                                                    scale=self.scale)
            x = x + attn.o_proj(o_1HPE.transpose(1, 2).reshape(1, p, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        self.lens_B[slot] = p
        return self._finish(x[:, -1])[0]

    @torch.inference_mode()
    def decode(self, ids_B: torch.Tensor) -> torch.Tensor:
        """Append one token per slot at position lens_B[b]; return fp32 logits_BV. Empty slots compute garbage."""
        b = ids_B.shape[0]
        if int(self.lens_B.max()) >= self.max_len:
            raise ValueError(f"decode: a slot reached max_len={self.max_len}; raise max_len")
        rows_B = torch.arange(b)
        positions_B1 = self.lens_B[:, None]
        # Attention always spans the whole buffer: a [:span] slice is non-contiguous and CPU bmm would copy it
        # (measured 2x slower); in steady state with continuous refill the longest slot is near max_len anyway.
        span = self.max_len
        visible_B11S = (torch.arange(span)[None] <= self.lens_B[:, None])[:, None, None]
        group = self.num_heads // self.num_kv
        x = self.embed(ids_B[:, None])
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            q_B1HE, k_B1GE, v_B1GE = self._qkv(attn, layer.input_layernorm(x), positions_B1)
            self.keys[i][rows_B, :, :, self.lens_B] = k_B1GE[:, 0]
            self.values[i][rows_B, :, self.lens_B] = v_B1GE[:, 0]
            k_XES = self.keys[i].view(b * self.num_kv, self.head_dim, span)
            v_XSE = self.values[i].view(b * self.num_kv, span, self.head_dim)
            q_XrE = q_B1HE.reshape(b * self.num_kv, group, self.head_dim)  # heads of one kv group are contiguous
            scores_BGrS = torch.bmm(q_XrE, k_XES).view(b, self.num_kv, group, span).float() * self.scale
            probs_BGrS = scores_BGrS.masked_fill(~visible_B11S, -math.inf).softmax(-1).to(x.dtype)
            o_BGrE = torch.bmm(probs_BGrS.view(b * self.num_kv, group, span), v_XSE)
            x = x + attn.o_proj(o_BGrE.reshape(b, 1, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        self.lens_B += 1
        return self._finish(x[:, 0])


def _pick(logits_V: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    if temperature <= 0:
        return int(logits_V.argmax())
    probs_V = torch.softmax(logits_V / temperature, dim=-1)
    return int(torch.multinomial(probs_V, 1, generator=generator))


def decode_stream(model: nn.Module, requests: Iterable[Request], *, num_slots: int, max_new_tokens: int,
                  eos_token_id: int, seed: int = 0, max_prompt_len: int = 1024) -> Iterator[Completion]:
    """Yield a Completion per Request, in completion order (not request order). `requests` is pulled lazily, one
    item whenever a slot frees up, so the caller can stop feeding at any time.

    Sampled requests (temperature > 0) draw from their own generator seeded by (seed, key), so a request's output
    does not depend on which requests share the batch.
    """
    decoder = SlotDecoder(model, num_slots, max_prompt_len + max_new_tokens + 1)
    pending = iter(requests)
    slot_key: list[str | None] = [None] * num_slots
    slot_prompt: list[list[int]] = [[] for _ in range(num_slots)]
    slot_out: list[list[int]] = [[] for _ in range(num_slots)]
    slot_gen: list[torch.Generator | None] = [None] * num_slots
    slot_temp: list[float] = [0.0] * num_slots
    next_B = torch.zeros(num_slots, dtype=torch.long)

    def admit(slot: int) -> bool:
        """Prefill the next request into `slot`; False when no request is left."""
        while True:
            item = next(pending, None)
            if item is None:
                slot_key[slot] = None
                decoder.lens_B[slot] = 0  # an empty slot keeps decoding garbage from position 0
                return False
            key, prompt, temperature = item.key, item.prompt_ids, item.temperature
            if len(prompt) > max_prompt_len:
                raise ValueError(f"request {key}: prompt of {len(prompt)} tokens exceeds max_prompt_len="
                                 f"{max_prompt_len}; filter prompts first or raise max_prompt_len")
            gen = None
            if temperature > 0:
                digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
                gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
            slot_key[slot], slot_prompt[slot], slot_out[slot] = key, list(prompt), []
            slot_gen[slot], slot_temp[slot] = gen, temperature
            token = _pick(decoder.prefill(slot, prompt), temperature, gen)
            slot_out[slot].append(token)
            next_B[slot] = token
            return True

    def done(slot: int) -> Completion | None:
        out = slot_out[slot]
        if out[-1] == eos_token_id or len(out) >= max_new_tokens:
            return Completion(slot_key[slot], slot_prompt[slot], list(out), out[-1] == eos_token_id)
        return None

    for slot in range(num_slots):
        while admit(slot):
            finished = done(slot)
            if finished is None:
                break
            yield finished
    while any(k is not None for k in slot_key):
        logits_BV = decoder.decode(next_B)
        for slot in range(num_slots):
            if slot_key[slot] is None:
                continue
            token = _pick(logits_BV[slot], slot_temp[slot], slot_gen[slot])
            slot_out[slot].append(token)
            next_B[slot] = token
            finished = done(slot)
            while finished is not None:
                yield finished
                if not admit(slot):
                    break
                finished = done(slot)
