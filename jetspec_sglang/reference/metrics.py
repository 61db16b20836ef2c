"""Per-request metrics of the reference engine: rounds, accept lengths, tau, per-depth acceptance, phase times.

Words as in verify.py: accept length = accepted + 1 = tokens a round commits (before stop/length cuts);
tau = mean accept length. Plain autoregressive decoding records every step as a round of accept length 1.
Phases of a round: draft (head context append + head forward), tree (top-k + build), verify (target forward),
accept (acceptance + KV compaction + bookkeeping). No sglang import.
"""
from __future__ import annotations

import contextlib
import time

import torch

PHASES = ("draft", "tree", "verify", "accept")


class RequestMetrics:
    """Accumulates one request's timings and accept lengths; `to_dict` is the metrics dict of GenerationResult."""

    def __init__(self, mode: str, depth: int, device: torch.device) -> None:
        self.mode = mode
        self.depth = depth  # L; per-depth acceptance has L entries (0 for plain decoding)
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.accept_lens: list[int] = []
        self.phase_s = dict.fromkeys(PHASES, 0.0)
        self.prefill_s = 0.0
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str):
        """Time a block (device-synchronised on CUDA) and add it to phase `name` ("prefill" or one of PHASES)."""
        self.sync()
        t0 = time.perf_counter()
        yield
        self.sync()
        elapsed = time.perf_counter() - t0
        if name == "prefill":
            self.prefill_s += elapsed
        else:
            self.phase_s[name] += elapsed

    def record_round(self, accept_len: int) -> None:
        self.accept_lens.append(int(accept_len))

    def to_dict(self, prompt_tokens: int, new_tokens: int, finish_reason: str) -> dict:
        """The metrics dict (JSON-ready). Times in seconds; shares are fractions of the summed round time.

        per_depth_acceptance[d-1] = fraction of rounds whose accepted path reached depth d (accept length > d).
        """
        total_s = time.perf_counter() - self._start
        rounds = len(self.accept_lens)
        round_s = sum(self.phase_s.values())
        per_depth = [sum(a > d for a in self.accept_lens) / rounds if rounds else 0.0
                     for d in range(1, self.depth + 1)]
        return {
            "mode": self.mode,
            "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens,
            "finish_reason": finish_reason,
            "rounds": rounds,
            "accept_lens": list(self.accept_lens),
            "tau": sum(self.accept_lens) / rounds if rounds else None,
            "per_depth_acceptance": per_depth,
            "prefill_s": self.prefill_s,
            **{f"{p}_s": self.phase_s[p] for p in PHASES},
            "round_s": round_s,
            "phase_share": {p: (self.phase_s[p] / round_s if round_s > 0 else 0.0) for p in PHASES},
            "total_s": total_s,
            "tokens_per_s": new_tokens / total_s if total_s > 0 else 0.0,
        }
