"""BudgetFeed: the worker's link to the budget chooser (jetspec_sglang.budget; docs/auto-budget.md).

It owns the step clock (host perf_counter at the start of each decode step), moves each step's accepted paths
to the host without a synchronisation (CUDA: a scatter into N counts, a non-blocking copy into a pinned ring
slot and an event, read at a later step once the event has completed; CPU: read at once), writes the log line at
--decode-log-interval and answers the /get_server_info report. Torch only; no sglang import.
"""
from __future__ import annotations

import logging
import time
from collections import Counter, deque

import numpy as np
import torch

from jetspec_sglang.budget import BudgetChooser
from jetspec_sglang.config import JetSpecConfig

logger = logging.getLogger(__name__)
RING = 8  # in-flight path-count copies on CUDA; a step that finds the ring full is not observed


class BudgetFeed:
    def __init__(self, config: JetSpecConfig, device, log_interval: int = 0):
        self.chooser = BudgetChooser(config)
        self.device = torch.device(device)
        self.log_interval = int(log_interval or 0)
        self._learn = self.chooser.policy in ("auto", "schedule")  # fixed/ladder need no acceptance statistics
        self._logged = Counter()
        self._decode_steps = 0
        self._inflight: deque = deque()  # (event, pinned counts, budget), oldest first
        self._free: list[torch.Tensor] = []
        if self._learn and self.device.type == "cuda":
            self._free = [torch.empty(config.budget, dtype=torch.float32, pin_memory=True) for _ in range(RING)]

    def begin_step(self, batch: int) -> int:
        """The budget of the decode step that starts now."""
        self._drain()
        return self.chooser.begin_step(batch, time.perf_counter())

    def interrupt(self) -> None:
        """A prefill, mixed or idle forward: the interval since the last decode start is not a decode step."""
        self.chooser.interrupt()

    def observe(self, accept_index: torch.Tensor, budget: int) -> None:
        """accept_index [bs, L + 1] int32 (eagle_sample): flat node ids b * N + i of each accepted path, -1 padded.

        Counts per node id i < N how many requests accepted node i (i = 0, the root, counts the requests).
        """
        self._tick()
        if not self._learn or budget < 2 or accept_index.numel() == 0:
            return
        bs = accept_index.shape[0]
        if accept_index.device.type != "cuda":  # host memory already: numpy is the cheapest path
            index_BP = accept_index.numpy()
            valid_BP = index_BP >= 0
            local = (index_BP - np.arange(bs)[:, None] * budget)[valid_BP]
            self.chooser.observe_paths(np.bincount(local, minlength=budget)[:budget], budget)
            return
        if not self._free:
            return
        valid_BP = accept_index >= 0
        local_BP = (accept_index.long() - torch.arange(bs, device=accept_index.device)[:, None] * budget) * valid_BP
        counts_N = torch.zeros(budget, dtype=torch.float32, device=accept_index.device)
        counts_N.scatter_add_(0, local_BP.reshape(-1), valid_BP.reshape(-1).float())  # no host sync (no bincount)
        pinned = self._free.pop()
        pinned[:budget].copy_(counts_N, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._inflight.append((event, pinned, budget))

    def _drain(self) -> None:
        while self._inflight and self._inflight[0][0].query():  # query() never blocks
            _, pinned, budget = self._inflight.popleft()
            self.chooser.observe_paths(pinned[:budget].numpy(), budget)
            self._free.append(pinned)

    def _tick(self) -> None:
        self._decode_steps += 1
        if self.log_interval and self._decode_steps % self.log_interval == 0:
            logger.info(self.chooser.log_line(self._logged))
            self._logged = Counter(self.chooser.chosen)

    def report(self) -> dict:
        return self.chooser.report()
