"""The tree budget of each decode step: fixed, ladder, forced schedule, or `auto` (docs/auto-budget.md).

Pure Python (no torch, no sglang). The worker calls `begin_step(batch, now)` at the start of every decode step
(it returns the budget), `interrupt()` for any other forward (prefill, idle) and `observe_paths(...)` once the
accepted paths of a step are on the host. `auto` picks, among `candidate_budgets(N)`, the budget n maximising
committed tokens per second, tau(n) / t(batch, n) (budget_estimates.py), with hysteresis, and spends at most a
fraction `explore` of decode time re-measuring the other candidates (the stalest first).
"""
from __future__ import annotations

from collections import Counter

from jetspec_sglang.budget_estimates import AcceptanceModel, CostModel
from jetspec_sglang.config import JetSpecConfig

POLICIES = ("auto", "fixed", "ladder", "schedule")
MAX_TREE_CANDIDATES = 5  # tree budgets tried by `auto` besides budget 1


def candidate_budgets(max_budget: int, count: int = MAX_TREE_CANDIDATES) -> tuple[int, ...]:
    """Budget 1 (no speculation) and max_budget halved until below 2, at most `count` tree budgets.

    16 -> (1, 2, 4, 8, 16); 64 -> (1, 4, 8, 16, 32, 64); 24 -> (1, 3, 6, 12, 24); 1 -> (1,).
    """
    trees, n = [], max_budget
    while n >= 2 and len(trees) < count:
        trees.append(n)
        n //= 2
    return (1,) + tuple(sorted(trees))


def policy_of(config: JetSpecConfig) -> str:
    """Which rule picks the budget: a forced schedule, the ladder, a fixed budget, or auto (the default)."""
    if config.budget_schedule:
        return "schedule"
    if config.budget_ladder:
        return "ladder"
    return "auto" if config.budget_auto else "fixed"


class BudgetChooser:
    """Per-step budget for a running batch; keeps the estimates and counters that the server reports."""

    def __init__(self, config: JetSpecConfig, hysteresis: float = 0.03, min_stale_steps: int = 32,
                 probe_steps: int = 2):
        self.config, self.policy = config, policy_of(config)
        self.probe_steps = probe_steps  # measured steps of every candidate at start-up (after its warm-up step)
        self.max_budget = config.budget
        self.candidates = candidate_budgets(config.budget) if self.policy == "auto" else ()
        self.explore, self.hysteresis, self.min_stale_steps = config.budget_explore, hysteresis, min_stale_steps
        self.accept = AcceptanceModel(config.budget)
        self.cost = CostModel()
        self.step = 0
        self.current = config.budget  # the exploiting choice; hysteresis keeps it unless another is clearly better
        self.chosen: Counter = Counter()  # budget -> decode steps run with it (since start)
        self.explored = 0  # decode steps that re-measured a non-best candidate
        self.decode_seconds = 0.0  # measured decode time (start-to-start intervals)
        self.explore_seconds = 0.0  # decode time lost to exploring: seconds - tau(n) / rate(best) per such step
        self._warm: set[int] = set()  # budgets whose first (warm-up) interval has been discarded
        self._pending = None  # (batch, budget, start, seconds per committed token of the best if exploring)
        self._last_batch = 0

    # --- the decode loop ------------------------------------------------------------------------------------------
    def begin_step(self, batch: int, now: float) -> int:
        """Budget for this decode step of `batch` requests starting at `now` (seconds, monotonic)."""
        if self.policy in ("auto", "schedule"):  # fixed and ladder keep only the counts
            self._close_interval(now)
        self.step += 1
        self._last_batch = batch
        extra = None
        if self.policy == "fixed":
            budget = self.max_budget
        elif self.policy == "ladder":
            budget = self.config.budget_for_batch(batch)
        elif self.policy == "schedule":
            budget = self.config.budget_schedule[(self.step - 1) % len(self.config.budget_schedule)]
        else:
            budget, extra = self._choose(batch)
        self.chosen[budget] += 1
        self._pending = (batch, budget, now, extra)
        return budget

    def interrupt(self) -> None:
        """A non-decode forward ran: the running interval does not measure a decode step."""
        self._pending = None

    def observe_paths(self, path_counts: list[float], budget: int) -> None:
        """Accepted paths of one step (AcceptanceModel.observe); any policy feeds it, only auto reads it."""
        self.accept.observe(path_counts, budget)

    def _close_interval(self, now: float) -> None:
        if self._pending is None:
            return
        batch, budget, start, best_per_token = self._pending
        self._pending = None
        seconds = now - start
        if seconds <= 0:
            return
        if budget not in self._warm:  # first step at a width: allocator/kernel warm-up, not the steady cost
            self._warm.add(budget)
            return
        self.cost.observe(batch, budget, seconds, self.step)
        self.decode_seconds += seconds
        if best_per_token is not None:  # what the best budget would have needed for this step's tokens
            self.explore_seconds += max(0.0, seconds - self.accept.accept_length(budget) * best_per_token)

    # --- auto -----------------------------------------------------------------------------------------------------
    def rates(self, batch: int) -> dict[int, float | None]:
        """Expected committed tokens per second per request, tau(n) / t(batch, n); None: n never measured."""
        out = {}
        for n in self.candidates:
            seconds = self.cost.estimate(batch, n)
            out[n] = None if seconds is None else self.accept.accept_length(n) / seconds
        return out

    def _choose(self, batch: int) -> tuple[int, float | None]:
        """(budget, the best budget's estimated seconds per committed token when exploring, else None)."""
        # Start-up probe: every candidate is measured probe_steps times after a warm-up step, the largest first,
        # which also fills the acceptance of every rank.
        for n in reversed(self.candidates):
            if n not in self._warm or self.cost.observations(n) < self.probe_steps:
                return n, None
        rates = self.rates(batch)
        best = max(self.candidates, key=lambda n: (rates[n], -n))
        if self.current in rates and rates[best] <= rates[self.current] * (1.0 + self.hysteresis):
            best = self.current
        self.current = best
        target = self._exploration(batch, best, rates)
        if target is None:
            return best, None
        self.explored += 1
        return target, 1.0 / rates[best]

    def _exploration(self, batch: int, best: int, rates: dict) -> int | None:
        """The stalest other candidate, when the time it would lose (its step time minus what the best budget
        needs for the tokens it commits) fits in the exploration allowance."""
        if self.explore <= 0:
            return None
        allowance = self.explore * self.decode_seconds - self.explore_seconds
        if allowance <= 0:
            return None
        stalest, age = None, self.min_stale_steps - 1
        for n in self.candidates:
            if n == best:
                continue
            last = self.cost.last_step(batch, n)
            n_age = self.step if last is None else self.step - last
            if n_age > age or (n_age == age and stalest is not None and n > stalest):
                stalest, age = n, n_age
        if stalest is None:
            return None
        loss = self.cost.estimate(batch, stalest) * max(0.0, 1.0 - rates[stalest] / rates[best])
        return stalest if loss <= allowance else None

    # --- reporting ------------------------------------------------------------------------------------------------
    def report(self, batch: int | None = None) -> dict:
        """JSON-ready state: policy, choice counts, and (auto) the estimates at `batch` (default: the last)."""
        batch = batch or self._last_batch or 1
        out = {"policy": self.policy, "max_budget": self.max_budget, "decode_steps": self.step,
               "chosen": {str(n): c for n, c in sorted(self.chosen.items())}}
        if self.policy != "auto":
            return out
        out |= {"candidates": list(self.candidates), "current": self.current, "batch": batch,
                "explored_steps": self.explored,
                "explore_time_fraction": round(self.explore_seconds / self.decode_seconds, 4)
                if self.decode_seconds else 0.0}
        out["accept_length"] = {str(n): round(self.accept.accept_length(n), 3) for n in self.candidates}
        out["round_ms"] = {str(n): (None if (t := self.cost.estimate(batch, n)) is None else round(t * 1e3, 2))
                           for n in self.candidates}
        out["tokens_per_s_per_request"] = {str(n): (None if r is None else round(r, 2))
                                           for n, r in self.rates(batch).items()}
        return out

    def log_line(self, since: Counter) -> str:
        """One line for the server log: steps per budget since the previous line, and the estimates (auto)."""
        window = self.chosen - since
        text = f"JETSPEC budget ({self.policy}): " + " ".join(f"N={n}x{c}" for n, c in sorted(window.items()))
        if self.policy == "auto":
            batch = self._last_batch or 1
            tau = " ".join(f"{n}:{self.accept.accept_length(n):.2f}" for n in self.candidates)
            cost = " ".join(f"{n}:{t * 1e3:.1f}" if (t := self.cost.estimate(batch, n)) else f"{n}:?"
                            for n in self.candidates)
            text += f" | current N={self.current} bs={batch} tau[{tau}] round_ms[{cost}]"
        return text
