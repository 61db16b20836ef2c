"""ReferenceEngine: batch-1 generation on an HF transformers target, the project's CPU oracle and debugging tool.

Modes: "tree" (JetSpec: N-node draft tree per round), "chain" (width 1, budget L + 1: a DFlash-style chain through
the same tree code) and "ar" (plain autoregressive decoding: the baseline and the test oracle). Greedy and
lossless sampled decoding; EOS / stop strings / max tokens. Follows jetspec-method.md 7.1 (the HF reference loop
of `hao-ai-lab/JetSpec` `jetspec/core/llm.py`). Batch 1 only: that is how the paper and the benchmark run it; a
batch would need per-request trees, padded masks and ragged KV, which SGLang's glue does. No sglang import.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn
from transformers import DynamicCache

from jetspec_sglang.config import JetSpecConfig
from jetspec_sglang.draft_head_config import check_against_target
from jetspec_sglang.reference.metrics import RequestMetrics
from jetspec_sglang.reference.sampling import SamplingParams, choose_token
from jetspec_sglang.reference.spec_round import DecodeState, Drafter, speculative_round
from jetspec_sglang.reference.stopping import StopChecker, target_eos_token_ids
from jetspec_sglang.reference.tree_verify import check_target
from jetspec_sglang.taps import forward_with_taps

MODES = ("tree", "chain", "ar")


@dataclass(frozen=True)
class GenerationResult:
    token_ids: list[int]  # emitted tokens; the EOS that ended the request is kept, nothing after it
    text: str | None  # decoded token_ids without special tokens, cut before a stop string; None w/o tokenizer
    finish_reason: str  # "eos" | "stop" | "length"
    metrics: dict  # RequestMetrics.to_dict: rounds, accept_lens, tau, per_depth_acceptance, times, tokens_per_s


class ReferenceEngine:
    """Generate from one prompt with a target and (for tree/chain) a draft head attached to that target.

    target: HF causal LM (Llama, Qwen3, ...) with sdpa or eager attention, in eval mode.
    head: a DraftHead with `attach_target(target embed_tokens, lm_head)` done; None for mode "ar".
    config: budget N, depth L (<= the head's block_size - 1), width K, tree_algo, backend. "chain" overrides
    width = 1 and budget = L + 1. eos_token_ids: default = the target's (config, generation_config, tokenizer).
    """

    def __init__(self, target: nn.Module, head: Drafter | None = None, config: JetSpecConfig | None = None,
                 mode: str = "tree", tokenizer=None, eos_token_ids: Iterable[int] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not one of {MODES}; fix --mode")
        check_target(target)
        config = config or JetSpecConfig()
        if mode != "ar":
            if head is None:
                raise ValueError(f"mode={mode!r} needs a draft head; pass head= (--draft DIR) or use mode 'ar'")
            check_against_target(head.config, target.config)
            if config.depth > head.config.depth:
                raise ValueError(f"depth={config.depth} exceeds the head's {head.config.depth} draft slots "
                                 f"(block_size {head.config.block_size}); set --depth <= {head.config.depth}")
            if mode == "chain":
                config = config.replace(width=1, budget=config.depth + 1, tree_algo="accum_logp")
        self.target, self.head, self.config, self.mode, self.tokenizer = target, head, config, mode, tokenizer
        self.eos_token_ids = frozenset(target_eos_token_ids(target, tokenizer) if eos_token_ids is None
                                       else (int(t) for t in eos_token_ids))
        self.device = target.get_input_embeddings().weight.device
        text_config = target.config.get_text_config() if hasattr(target.config, "get_text_config") else target.config
        self.max_positions = int(getattr(text_config, "max_position_embeddings", 1 << 30))

    @property
    def depth(self) -> int:
        return 0 if self.mode == "ar" else self.config.depth

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    @torch.inference_mode()
    def generate(self, prompt_ids: Sequence[int] | torch.Tensor, params: SamplingParams | None = None
                 ) -> GenerationResult:
        """Generate for ONE prompt (token ids, [T] or [1, T]); see GenerationResult."""
        params = params or SamplingParams()
        prompt = _prompt_list(prompt_ids)
        if len(prompt) + params.max_new_tokens + self.depth + 1 > self.max_positions:
            raise ValueError(f"prompt ({len(prompt)} tokens) + max_new_tokens ({params.max_new_tokens}) + depth "
                             f"({self.depth}) exceeds the target's max_position_embeddings {self.max_positions}; "
                             f"lower --max-new-tokens or shorten the prompt")
        metrics = RequestMetrics(self.mode, self.depth, self.device)
        checker = StopChecker(params, self.eos_token_ids, self._decode if self.tokenizer is not None else None)
        generator = params.make_generator(self.device)

        state, first = self._prefill(prompt, params, generator, metrics)
        if not checker.push(first):
            while True:
                if self.mode == "ar":
                    emitted = [self._ar_step(state, params, generator, metrics)]
                else:
                    emitted = speculative_round(self.target, self.head, state, self.config, params, generator,
                                                metrics)
                checker.push_many(emitted)  # cuts a multi-token commit at EOS / stop / max tokens
                if checker.finished:
                    break
        return GenerationResult(token_ids=list(checker.token_ids), text=checker.text(),
                                finish_reason=checker.finish_reason,
                                metrics=metrics.to_dict(len(prompt), len(checker.token_ids), checker.finish_reason))

    def _prefill(self, prompt: list[int], params: SamplingParams, generator: torch.Generator,
                 metrics: RequestMetrics) -> tuple[DecodeState, int]:
        """Target forward over the prompt (KV cache, and taps into the head context); the first bonus token."""
        with metrics.phase("prefill"):
            ids_BT = torch.tensor([prompt], dtype=torch.int64, device=self.device)
            cache = DynamicCache(config=self.target.config)
            draft_cache = None
            if self.mode == "ar":
                out = self.target(ids_BT, past_key_values=cache, use_cache=True, logits_to_keep=1)
            else:
                out, taps_BTF = forward_with_taps(self.target, self.head.config.target_layer_ids, ids_BT,
                                                  past_key_values=cache, use_cache=True, logits_to_keep=1)
                draft_cache = self.head.new_cache(1)
                self.head.append_context(draft_cache, taps_BTF)
            first = choose_token(out.logits[0, -1], params, generator)
        state = DecodeState(committed=prompt + [first], cache=cache, draft_cache=draft_cache)
        state.check_invariant()
        return state, first

    def _ar_step(self, state: DecodeState, params: SamplingParams, generator: torch.Generator,
                 metrics: RequestMetrics) -> int:
        """Plain decoding: one target forward over the anchor, one token. Recorded as a round of accept length 1."""
        with metrics.phase("verify"):
            anchor_B1 = torch.tensor([[state.committed[-1]]], dtype=torch.int64, device=self.device)
            out = self.target(anchor_B1, past_key_values=state.cache, use_cache=True)
        with metrics.phase("accept"):
            token = choose_token(out.logits[0, -1], params, generator)
            state.committed.append(token)
            state.check_invariant()
        metrics.record_round(1)
        return token


def _prompt_list(prompt_ids: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(prompt_ids, torch.Tensor):
        if prompt_ids.dim() == 2 and prompt_ids.shape[0] == 1:
            prompt_ids = prompt_ids[0]
        if prompt_ids.dim() != 1:
            raise ValueError(f"prompt_ids has shape {tuple(prompt_ids.shape)}; the reference engine runs batch 1: "
                             f"pass one prompt as [T] or [1, T] token ids")
        prompt_ids = prompt_ids.tolist()
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise ValueError("prompt_ids is empty; give at least one token (e.g. the chat template's prefix)")
    return prompt
