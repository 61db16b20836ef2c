"""When a request ends and what it emitted: EOS, stop strings, max new tokens.

Tokens are pushed one at a time in emission order, so a round that accepted several tokens is cut exactly where
the request ends: nothing after EOS, after the token that completes a stop string, or past max_new_tokens is
ever emitted. No sglang import.
"""
from __future__ import annotations

from typing import Callable, Iterable

from jetspec_sglang.reference.sampling import SamplingParams

FINISH_EOS = "eos"  # the target emitted an EOS token (kept as the last token id; not in the text)
FINISH_STOP = "stop"  # the decoded text reached a stop string (the text is cut before it)
FINISH_LENGTH = "length"  # max_new_tokens tokens were emitted


class StopChecker:
    """Collects the emitted token ids of one request and decides when it is finished.

    Checked in this order after each token: EOS, stop string, length. The token ids keep the token that ended
    the request (EOS, or the token completing a stop string); `text` drops special tokens and cuts before the
    stop string.
    """

    def __init__(self, params: SamplingParams, eos_token_ids: Iterable[int],
                 decode: Callable[[list[int]], str] | None = None) -> None:
        if params.stop and decode is None:
            raise ValueError(f"stop={params.stop!r} needs a tokenizer to decode the text; pass tokenizer= to the "
                             f"engine or drop the stop strings")
        self.params = params
        self.eos_token_ids = frozenset() if params.ignore_eos else frozenset(int(t) for t in eos_token_ids)
        self.decode = decode
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None
        self._stop_at: int | None = None  # character offset of the stop string in the decoded text

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def push(self, token_id: int) -> bool:
        """Emit one token; return True when the request is finished (then push must not be called again)."""
        if self.finished:
            raise RuntimeError(f"StopChecker.push({token_id}) after the request finished ({self.finish_reason}); "
                               f"the engine must stop emitting")
        self.token_ids.append(int(token_id))
        if token_id in self.eos_token_ids:
            self.finish_reason = FINISH_EOS
        elif self.params.stop and self._find_stop() is not None:
            self.finish_reason = FINISH_STOP
        elif len(self.token_ids) >= self.params.max_new_tokens:
            self.finish_reason = FINISH_LENGTH
        return self.finished

    def push_many(self, token_ids: Iterable[int]) -> int:
        """Push tokens in order until the request finishes; return how many were emitted."""
        emitted = 0
        for token_id in token_ids:
            emitted += 1
            if self.push(token_id):
                break
        return emitted

    def _find_stop(self) -> int | None:
        text = self.decode(self.token_ids)
        hits = [i for i in (text.find(s) for s in self.params.stop) if i >= 0]
        self._stop_at = min(hits) if hits else None
        return self._stop_at

    def text(self) -> str | None:
        """The decoded output (special tokens skipped), cut before the stop string; None without a tokenizer."""
        if self.decode is None:
            return None
        text = self.decode(self.token_ids)
        return text[:self._stop_at] if self.finish_reason == FINISH_STOP else text


def target_eos_token_ids(target, tokenizer=None) -> frozenset[int]:
    """EOS ids of an HF target: config.eos_token_id, generation_config.eos_token_id and tokenizer.eos_token_id
    (each an int, a list or None), united. SmolLM2: {2}; Llama-3 instruct: {128001, 128008, 128009}."""
    ids: set[int] = set()
    sources = (getattr(target, "config", None), getattr(target, "generation_config", None), tokenizer)
    for source in sources:
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        ids.update(int(v) for v in (value if isinstance(value, (list, tuple, set)) else [value]))
    return frozenset(ids)
