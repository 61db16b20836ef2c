"""What the automatic budget knows: accept length per budget and round cost per (batch size, budget).

Pure Python + numpy (no torch, no sglang), fed by the worker with numbers it already holds on the host; the method and
its formulas are in docs/auto-budget.md. Words (budget, accepted, bonus) as defined in verify.py.

* AcceptanceModel: a best-first tree of budget n is the first n nodes of the tree of any larger budget (the
  heap pops the same nodes in the same order; tree.build_tree_ref), node ids grow along every path, and greedy
  verification accepts, in the smaller tree, exactly the nodes of the larger tree's accepted path with id < n.
  So one step at budget N tells, for every n <= N, what n would have accepted: per-rank hit rates
  h[i] = P(node i is on the accepted path) give accept length tau(n) = 1 + sum_{0 < i < n} h[i].
* CostModel: the seconds of one decode step (start to start, scheduler included) per exact (batch, budget) as a
  cell times one machine-speed factor shared by all cells: a step slower or faster than its cell predicts moves
  the factor first (other work on the machine slows every budget alike), the cell by what is left. Cells take the
  minimum of their first observations, then a recency-weighted mean; unmeasured cells are interpolated along the
  batch size.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np


class AcceptanceModel:
    """Per-rank hit rates with a memory of `memory` request-observations per rank (older evidence is scaled down,
    an exponential moving average in requests). A second, short memory (`fast_memory`) follows the same ranks;
    when it departs from the long one by more than its noise (4 sigma + 0.02, sigma of the long estimate at the
    short memory's size), the long one restarts from it: a head or workload that changes is followed after a few
    steps that verify the rank, a stationary one is measured finely."""

    def __init__(self, max_budget: int, memory: float = 256.0, fast_memory: float = 8.0):
        if max_budget < 1 or not 0 < fast_memory <= memory:
            raise ValueError(f"AcceptanceModel(max_budget={max_budget}, memory={memory}, fast_memory={fast_memory})"
                             ": need max_budget >= 1 and 0 < fast_memory <= memory")
        self.max_budget, self.memory, self.fast_memory = max_budget, float(memory), float(fast_memory)
        self.hits = np.zeros(max_budget)  # decayed count of requests whose accepted path holds node i
        self.seen = np.zeros(max_budget)  # decayed count of requests verified with a tree that holds node i
        self.fast_hits, self.fast_seen = np.zeros(max_budget), np.zeros(max_budget)
        self.restarts = 0  # ranks restarted from the short memory (changes detected)
        self._prefix: np.ndarray | None = None  # cached 1 + cumulative hit rates

    def observe(self, path_counts, budget: int) -> None:
        """One step at `budget`: path_counts[i] = requests whose accepted path holds node i (i < budget).

        path_counts[0] (the root, on every path) is the number of requests verified.
        Example: 2 requests, budget 4, paths [0, 1, 3] and [0] -> path_counts [2, 1, 0, 1].
        """
        requests = float(path_counts[0])
        budget = min(budget, self.max_budget, len(path_counts))
        if requests <= 0 or budget < 2:
            return  # budget 1 verifies the root only: nothing about the tree is learnt
        hit = np.minimum(np.asarray(path_counts[1:budget], dtype=np.float64), requests)
        ranks = slice(1, budget)
        _fold(self.seen, self.hits, ranks, requests, hit, self.memory)
        _fold(self.fast_seen, self.fast_hits, ranks, requests, hit, self.fast_memory)
        fast_n = self.fast_seen[ranks]
        p_fast, p = self.fast_hits[ranks] / fast_n, self.hits[ranks] / self.seen[ranks]
        sigma = np.sqrt(np.maximum(p * (1 - p), 0.01) / fast_n)
        moved = (fast_n >= self.fast_memory / 2) & (np.abs(p_fast - p) > 4 * sigma + 0.02)
        if moved.any():
            idx = np.flatnonzero(moved) + 1
            self.seen[idx], self.hits[idx] = self.fast_seen[idx], self.fast_hits[idx]
            self.restarts += len(idx)
        self._prefix = None

    def hit_rate(self, i: int) -> float:
        return float(self.hits[i] / self.seen[i]) if self.seen[i] > 0 else 0.0

    def observed(self, n: int) -> bool:
        """True when every rank below n has been verified at least once."""
        return bool((self.seen[1:min(n, self.max_budget)] > 0).all())

    def accept_length(self, n: int) -> float:
        """tau(n) = 1 + sum of hit rates of nodes 1..n-1 (the bonus token always commits); unseen ranks count 0."""
        if self._prefix is None:
            rates = np.divide(self.hits, self.seen, out=np.zeros(self.max_budget), where=self.seen > 0)
            rates[0] = 1.0
            self._prefix = np.cumsum(rates)
        return float(self._prefix[max(1, min(n, self.max_budget)) - 1])


def _fold(seen: np.ndarray, hits: np.ndarray, ranks: slice, requests: float, hit: np.ndarray, memory: float):
    """Add one step's evidence, first scaling the old so that at most `memory` request-observations remain."""
    old = seen[ranks]
    keep = np.divide(np.maximum(memory - requests, 0.0), old, out=np.zeros_like(old), where=old > 0)
    keep = np.minimum(keep, 1.0)
    seen[ranks] = old * keep + requests
    hits[ranks] = hits[ranks] * keep + hit


@dataclass
class Cell:
    seconds: float  # recency-weighted mean step time
    count: int  # observations folded in
    step: int  # decode step of the latest observation


class CostModel:
    """Step seconds per exact (batch size, budget) cell, times a machine-speed factor shared by every cell.

    A cell holds a budget's cost relative to the others (in the units of the factor); an estimate is cell x factor.
    A settled cell's new observation first moves the factor, in log space by `speed_weight` of its ratio to the
    prediction, then the cell by `weight` of what is left: when other work slows the machine, the running budget's
    steps raise the factor and so every budget's estimate alike, instead of only the running budget's cell while
    the others keep stale, low cells (measured on this CPU: a burst raised N = 8's cell 53 -> 76 ms and auto ran
    N = 4 for most of a benchmark). The first `settle` observations of a cell keep their minimum (one unlucky
    first step must not make a budget look expensive until exploration gets round to it again) and leave the
    factor alone; every ratio is clipped to [1 / clip, clip] (a GC pause or a stray prefill moves nothing far)."""

    def __init__(self, weight: float = 0.2, clip: float = 4.0, settle: int = 3, speed_weight: float = 0.5):
        self.weight, self.clip, self.settle, self.speed_weight = weight, clip, settle, speed_weight
        self.speed = 1.0  # machine-speed factor: estimate = cell.seconds * speed
        self.cells: dict[tuple[int, int], Cell] = {}
        self._batches: dict[int, list[int]] = {}  # budget -> sorted batch sizes with a cell
        self._by_batch: dict[int, dict[int, Cell]] = {}  # batch -> budget -> cell
        self._recent: dict[tuple[int, int], int] = {}  # (budget, half-octave batch bucket) -> latest step

    def observe(self, batch: int, budget: int, seconds: float, step: int) -> None:
        self._recent[(budget, _bucket(batch))] = step
        cell = self.cells.get((batch, budget))
        if cell is None:
            cell = Cell(seconds / self.speed, 1, step)
            self.cells[(batch, budget)] = self._by_batch.setdefault(batch, {})[budget] = cell
            bisect.insort(self._batches.setdefault(budget, []), batch)
            return
        cell.count += 1
        cell.step = step
        if cell.count <= self.settle:
            cell.seconds = min(cell.seconds, seconds / self.speed)
            return
        ratio = min(max(seconds / (cell.seconds * self.speed), 1.0 / self.clip), self.clip)
        self.speed *= ratio ** self.speed_weight
        cell.seconds *= 1.0 + self.weight * (ratio ** (1.0 - self.speed_weight) - 1.0)

    def measured(self, budget: int) -> bool:
        return budget in self._batches

    def observations(self, budget: int) -> int:
        """Observations of `budget` over all batch sizes."""
        return sum(self.cells[(b, budget)].count for b in self._batches.get(budget, ()))

    def estimate(self, batch: int, budget: int) -> float | None:
        """Seconds of a step of `batch` requests at `budget`; None when the budget was never measured.

        Measured cell: its mean. Batch sizes of this budget on both sides: linear interpolation. One side only
        (b' nearest): t(b', n) scaled by t(b, m) / t(b', m) for the budget m measured at both b and b' most
        recently (how cost grows with the batch, learnt from another budget); else t(b', n) as it is.
        """
        relative = self._relative(batch, budget)
        return None if relative is None else relative * self.speed

    def _relative(self, batch: int, budget: int) -> float | None:
        """estimate() without the machine-speed factor."""
        cell = self.cells.get((batch, budget))
        if cell is not None:
            return cell.seconds
        batches = self._batches.get(budget)
        if not batches:
            return None
        j = bisect.bisect_left(batches, batch)
        if 0 < j < len(batches):
            lo, hi = batches[j - 1], batches[j]
            t_lo, t_hi = self.cells[(lo, budget)].seconds, self.cells[(hi, budget)].seconds
            return t_lo + (t_hi - t_lo) * (batch - lo) / (hi - lo)
        near = batches[0] if j == 0 else batches[-1]
        t_near = self.cells[(near, budget)].seconds
        refs = [(c.step, m) for m, c in self._by_batch.get(batch, {}).items() if (near, m) in self.cells]
        if refs:
            _, m = max(refs)
            return t_near * self.cells[(batch, m)].seconds / self.cells[(near, m)].seconds
        return t_near

    def last_step(self, batch: int, budget: int) -> int | None:
        """Latest decode step at which `budget` was measured with a batch in the half-octave bucket of `batch` or
        a neighbouring one (batch 8 -> batches 6..11)."""
        bucket = _bucket(batch)
        steps = [s for k in (bucket - 1, bucket, bucket + 1) if (s := self._recent.get((budget, k))) is not None]
        return max(steps) if steps else None


def _bucket(batch: int) -> int:
    """Half-octave bucket: round(2 * log2(batch)); 1 -> 0, 2 -> 2, 3 -> 3, 4 -> 4, 8 -> 6, 16 -> 8."""
    return round(2 * math.log2(max(batch, 1)))
