"""Per-phase wall time of decode steps inside a running server (JETSPEC_PROFILE=FILE; off: nothing is installed).

When JETSPEC_PROFILE names a file, the plugin wraps SGLang's Scheduler.run_batch (hook P1 in patches/README.md,
plain and JETSPEC servers alike) and the JETSPEC worker marks its phases. Every decode step becomes one record:
    {"bs", "n" (tree budget, JETSPEC only), "run_s" (run_batch wall time), "period_s" (start to start of two
     consecutive decode steps: run_batch + the scheduler's own work; None for the first step after a prefill),
     "phases": {phase: seconds}}   (worker phases, in step order; JETSPEC only)
Records are appended to FILE (JSON lines) at every prefill batch and every FLUSH_EVERY steps, so a client that
sends one short request after its measured ones finds all of them on disk (bench/bench_round.py does).
Off (the variable unset or empty): `active()` is None, the worker's `if prof:` checks are the whole cost and the
scheduler is not wrapped. On CUDA each mark synchronises the device (profiling runs only).
JETSPEC_PROFILE_OPS=START:COUNT additionally runs torch.profiler over COUNT decode steps from the START-th and
writes its operator table (self CPU time) to FILE.ops.txt, and the same split by input shapes to FILE.shapes.txt:
where a phase's time goes, operator by operator.
"""
from __future__ import annotations

import json
import os
import time

ENV = "JETSPEC_PROFILE"
OPS_ENV = "JETSPEC_PROFILE_OPS"  # "START:COUNT": torch.profiler over decode steps START.. (op table to FILE.ops.txt)
FLUSH_EVERY = 256
# Worker phases of one JETSPEC decode step, in order (README "Round profile").
PHASES = ("prepare", "draft_forward", "topk", "tree_build", "masks", "verify_prepare", "verify_forward", "sample",
          "kv_compaction", "draft_kv_append", "finish")


def enabled() -> bool:
    return bool(os.environ.get(ENV, "").strip())


class StepProfiler:
    """One per process. The scheduler hook brackets each decode step; the worker laps its phases inside it."""

    def __init__(self, path: str):
        self.path = path
        self.records: list[dict] = []
        self.sync = _no_sync  # the worker sets torch.cuda.synchronize on CUDA
        self._step: dict | None = None
        self._step_start = 0.0
        self._prev_start: float | None = None
        self._lap = 0.0
        self._steps = 0
        self._ops = None
        spec = os.environ.get(OPS_ENV, "").strip()
        self._ops_window = tuple(int(x) for x in spec.split(":")) if spec else None

    # --- scheduler side ------------------------------------------------------------------------------------------
    def step_begin(self, bs: int) -> None:
        self.sync()
        now = time.perf_counter()
        period = None if self._prev_start is None else now - self._prev_start
        self._step = {"bs": bs, "n": None, "run_s": None, "period_s": None, "phases": {}}
        if self.records and period is not None:
            self.records[-1]["period_s"] = period  # the previous step's full period ends where this one starts
        self._step_start = self._prev_start = now
        self._steps += 1
        if self._ops_window and self._steps == self._ops_window[0]:
            import torch.profiler

            self._ops = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
            self._ops.__enter__()

    def step_end(self) -> None:
        self.sync()
        if self._step is None:
            return
        self._step["run_s"] = time.perf_counter() - self._step_start
        if self._ops is not None and self._steps == sum(self._ops_window) - 1:
            self._ops.__exit__(None, None, None)
            with open(self.path + ".ops.txt", "w") as f:
                f.write(self._ops.key_averages().table(sort_by="self_cpu_time_total", row_limit=60))
            with open(self.path + ".shapes.txt", "w") as f:  # the same, split by input shapes (which matmul)
                f.write(self._ops.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total",
                                                                                row_limit=80))
            self._ops, self._ops_window = None, None
        self.records.append(self._step)
        self._step = None
        if len(self.records) >= FLUSH_EVERY:
            self.flush(keep_last=True)

    def other_batch(self) -> None:
        """A prefill/idle batch: the decode streak ends (no period across it); records go to disk."""
        self._prev_start = None
        self.flush()

    def flush(self, keep_last: bool = False) -> None:
        """Append finished records to the file; keep_last holds back the newest (its period is still open)."""
        done = self.records[:-1] if keep_last else self.records
        if done:
            with open(self.path, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in done)
        self.records = self.records[-1:] if keep_last else []

    # --- worker side ---------------------------------------------------------------------------------------------
    def worker_begin(self, n: int) -> None:
        self.sync()
        if self._step is not None:
            self._step["n"] = n
        self._lap = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Charge the time since the previous mark to `phase` (summed if a phase is marked twice)."""
        self.sync()
        now = time.perf_counter()
        if self._step is not None:
            phases = self._step["phases"]
            phases[phase] = phases.get(phase, 0.0) + (now - self._lap)
        self._lap = now


def _no_sync() -> None:
    return None


_PROFILER: StepProfiler | None = None


def active() -> StepProfiler | None:
    """The process's profiler when JETSPEC_PROFILE is set, else None (created on first use)."""
    global _PROFILER
    if _PROFILER is None and enabled():
        _PROFILER = StepProfiler(os.environ[ENV].strip())
    return _PROFILER


def read_records(path: str) -> list[dict]:
    """The records a profiled server wrote (bench side)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
