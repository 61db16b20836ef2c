"""Sampling parameters of one request, and the single-token choice made outside the tree (the prefill bonus and
every step of plain autoregressive decoding).

Tree rounds sample through `verify.accept_sampled`; `choose_token` draws from the same distribution
(`verify.target_probs`: temperature, then top-k, then top-p), so every path of the engine emits tokens of one law.
No sglang import.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from jetspec_sglang.verify import target_probs


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy (argmax); > 0 samples softmax(logits / temperature)
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    top_p: float = 1.0  # keep the smallest set of mass >= top_p (the token crossing it included); 1 = off
    max_new_tokens: int = 128  # hard cap on emitted tokens (EOS included)
    stop: tuple[str, ...] = ()  # stop strings, matched on the decoded text; the text is cut before the first one
    seed: int | None = 0  # seed of the request's torch.Generator (T > 0); None draws a fresh seed
    ignore_eos: bool = False  # keep going past EOS (benchmarks with a fixed output length)

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature={self.temperature!r} must be >= 0 (0 = greedy); fix --temperature")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k={self.top_k!r} must be an int >= 0 (0 = off); fix --top-k")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p!r} must be in (0, 1] (1 = off); fix --top-p")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens!r} must be an int >= 1; fix --max-new-tokens")
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop={self.stop!r} must be a tuple of non-empty strings; fix --stop")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(temperature_B float32, top_k_B int64 or None when off, top_p_B float32 or None when off), B = 1."""
        temperature_B = torch.tensor([self.temperature], dtype=torch.float32, device=device)
        top_k_B = torch.tensor([self.top_k], dtype=torch.int64, device=device) if self.top_k else None
        top_p_B = torch.tensor([self.top_p], dtype=torch.float32, device=device) if self.top_p < 1 else None
        return temperature_B, top_k_B, top_p_B

    def make_generator(self, device: torch.device) -> torch.Generator:
        generator = torch.Generator(device=device)
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return generator


def choose_token(logits_V: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """The target's choice from one row of logits: argmax when greedy, else one draw from `target_probs`."""
    if params.greedy:
        return int(logits_V.argmax())
    probs_V = target_probs(logits_V[None, None], *params.tensors(logits_V.device))[0, 0]
    return int(torch.multinomial(probs_V, 1, generator=generator))
