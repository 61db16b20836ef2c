"""The points of a serving sweep, run through SGLang's own `sglang.benchmark.serving`, and their records.

A point is a max-concurrency (closed loop, all requests queued at t=0) or a Poisson request rate. The client is
SGLang's own benchmark (sglang/benchmark/serving.py, its CLI entry point), so the numbers are the ones SGLang users
quote. All points of one server run in one driver process (this file as a script: the client's ~10 s import is
paid once), in its own process group, each point under a SIGALRM timeout. Prompts come from a ShareGPT-format
file whose turn 0 is already rendered with the chat template (jetspec_sglang.data.bench_file): no
--apply-chat-template, which would strip SmolLM2's bos string <|im_start|> from every turn. Only the driver
imports sglang.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from jetspec_sglang.serving import budget_report

CONCURRENCY, RATE = "concurrency", "rate"
# bench_serving result fields copied into a record as they are (ms unless named otherwise).
METRIC_KEYS = (
    "duration", "completed", "total_input_tokens", "total_output_tokens", "total_output_tokens_retokenized",
    "request_throughput", "output_throughput", "total_throughput", "max_output_tokens_per_s", "concurrency",
    "accept_length",
    "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms",
    "mean_itl_ms", "median_itl_ms", "p99_itl_ms", "mean_e2e_latency_ms", "median_e2e_latency_ms",
    "p99_e2e_latency_ms",
)
DETAIL_KEYS = ("input_lens", "output_lens", "ttfts", "generated_texts", "errors")  # per request, in send order
SERVER_INFO_KEYS = ("model_path", "dtype", "device", "attention_backend", "speculative_algorithm",
                    "speculative_draft_model_path", "speculative_num_draft_tokens", "speculative_num_steps",
                    "max_running_requests", "max_total_tokens", "version")


class RunError(RuntimeError):
    """A benchmark subprocess failed or timed out; the message carries its log tail."""


@dataclass(frozen=True)
class Point:
    mode: str  # CONCURRENCY or RATE
    max_concurrency: int | None  # None = unbounded (rate points only)
    request_rate: float  # requests/s of the Poisson arrivals; inf = all at t=0 (concurrency points)
    num_prompts: int

    @property
    def key(self) -> str:
        """'c16' or 'r0.5': the point's name in file names and tables."""
        return f"c{self.max_concurrency}" if self.mode == CONCURRENCY else f"r{self.request_rate:g}"

    @property
    def value(self) -> float:
        return self.max_concurrency if self.mode == CONCURRENCY else self.request_rate


def sweep_points(concurrency, rates, available: int, waves: int, min_prompts: int, rate_prompts: int,
                 rate_max_concurrency: int | None) -> list[Point]:
    """Concurrency points send clamp(waves * c, min_prompts, available) prompts; rate points `rate_prompts`.

    concurrency (1, 16), waves 2, min_prompts 4, available 24 -> c1: 4 prompts, c16: 24 prompts.
    """
    points = [Point(CONCURRENCY, c, math.inf, min(available, max(min_prompts, waves * c))) for c in concurrency]
    points += [Point(RATE, rate_max_concurrency, float(r), min(available, rate_prompts)) for r in rates]
    return points


def prompt_order(dataset_path: str | os.PathLike, seed: int, num_prompts: int) -> list[str]:
    """Ids of the prompts bench_serving sends, in send order (= the order of its per-request details).

    Its ShareGPT loader seeds `random` with --seed, shuffles the file's conversations once and keeps the first
    --num-prompts (none are filtered: prompts are long and the output length is fixed), so the same file and
    seed give every run the same prefix of one permutation. `check_prompt_lens` verifies it on each record.
    """
    conversations = json.loads(Path(dataset_path).read_text(encoding="utf-8"))
    ids = [c["id"] for c in conversations if len(c["conversations"]) >= 2]
    random.Random(seed).shuffle(ids)  # the same Mersenne Twister draws as random.seed(seed); random.shuffle(...)
    return ids[:num_prompts]


def check_prompt_lens(record: dict, prompt_lens: dict[str, int]) -> None:
    """Raise if the record's input_lens are not the token counts of the prompts `prompt_order` says were sent."""
    expected = [prompt_lens[i] for i in record["prompt_ids"]]
    if record["input_lens"] != expected:
        raise RunError(f"{record['config']} {record['point']}: bench_serving's prompt lengths "
                       f"{record['input_lens'][:8]} are not those of the expected prompt order {expected[:8]}; its "
                       f"ShareGPT loader changed (shuffle or filter) and outputs cannot be matched to prompts")


def bench_argv(url: str, point: Point, dataset_path: str, output_len: int, seed: int, warmup: int,
               out_file: str, tokenizer: str | None = None) -> list[str]:
    """`sglang.benchmark.serving` arguments of one point (greedy, EOS honoured, fixed output cap)."""
    argv = ["--backend", "sglang", "--base-url", url, "--dataset-name", "sharegpt", "--dataset-path", str(dataset_path),
            "--num-prompts", str(point.num_prompts), "--sharegpt-output-len", str(output_len), "--disable-ignore-eos",
            "--temperature", "0", "--seed", str(seed),
            "--request-rate", "inf" if math.isinf(point.request_rate) else f"{point.request_rate:g}",
            "--warmup-requests", str(warmup), "--flush-cache", "--output-file", str(out_file), "--output-details",
            "--disable-tqdm", "--ready-check-timeout-sec", "60"]
    if point.max_concurrency is not None:
        argv += ["--max-concurrency", str(point.max_concurrency)]
    if tokenizer:
        argv += ["--tokenizer", str(tokenizer)]
    return argv


def run_points(jobs: list[dict], workdir: Path, timeout: float, on_done=None) -> list[dict | RunError]:
    """Run bench_serving jobs ({"argv", "out_file"}) in one driver process (SGLang's client imported once).

    Each job gets `timeout` s (SIGALRM in the driver); the driver itself is killed after len(jobs) * timeout + 120
    s. Returns, per job, its JSON result line or the RunError; `on_done(i, result)` fires as each job ends.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    plan, status, log_file = workdir / "plan.json", workdir / "status.jsonl", workdir / "client.log"
    for job in jobs:
        Path(job["out_file"]).parent.mkdir(parents=True, exist_ok=True)
        Path(job["out_file"]).unlink(missing_ok=True)  # bench_serving appends
    plan.write_text(json.dumps({"timeout": timeout, "jobs": jobs}))
    status.unlink(missing_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    deadline = len(jobs) * timeout + 120
    results: list = [None] * len(jobs)
    with open(log_file, "w") as log:
        proc = subprocess.Popen([sys.executable, __file__, str(plan), str(status)], stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            elapsed = 0.0
            while proc.poll() is None and elapsed < deadline:
                _collect(jobs, status, results, on_done, log_file)
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    elapsed += 2
        finally:
            if proc.poll() is None:  # past the deadline, or interrupted (Ctrl-C): leave no client behind
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    _collect(jobs, status, results, on_done, log_file)
    for i, result in enumerate(results):
        if result is None:
            results[i] = RunError(f"bench_serving driver exited {proc.returncode} before this job; "
                                  f"log {log_file}:\n{_tail(log_file)}")
            if on_done:
                on_done(i, results[i])
    return results


def _collect(jobs, status: Path, results: list, on_done, log_file: Path) -> None:
    lines = status.read_text().splitlines() if status.exists() else []
    for line in lines:
        entry = json.loads(line)
        i = entry["job"]
        if results[i] is not None:
            continue
        out_file = Path(jobs[i]["out_file"])
        rows = out_file.read_text().splitlines() if out_file.exists() else []
        if entry["error"] or not rows:
            results[i] = RunError(f"bench_serving: {entry['error'] or 'no result line'}; log {log_file}:\n"
                                  f"{_tail(log_file)}")
        else:
            results[i] = json.loads(rows[-1])
        if on_done:
            on_done(i, results[i])


class _Alarm(Exception):
    pass


def _drive(plan_path: str, status_path: str) -> None:
    """Driver process: import SGLang's client once, run each job through its own CLI entry point."""
    import time
    import traceback

    from sglang.benchmark import serving

    plan = json.loads(Path(plan_path).read_text())

    def alarm(*_):
        raise _Alarm(f"ran past the per-run timeout of {plan['timeout']:g} s")

    signal.signal(signal.SIGALRM, alarm)
    for i, job in enumerate(plan["jobs"]):
        print(f"===== job {i}: {' '.join(job['argv'])}", flush=True)
        started, error = time.time(), ""
        sys.argv = ["sglang.benchmark.serving", *job["argv"]]
        signal.alarm(max(1, int(plan["timeout"])))
        try:
            serving.cli_main()
        except SystemExit as e:  # its CLI exits 1 on a bad server/model; a clean return writes the result
            error = f"exited {e.code}"
        except Exception as e:  # noqa: BLE001 -- reported per job to the parent, which raises RunError
            error = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        finally:
            signal.alarm(0)
        with open(status_path, "a") as f:
            f.write(json.dumps({"job": i, "error": error, "seconds": round(time.time() - started, 1)}) + "\n")
        sys.stdout.flush()


def make_record(raw: dict, group: str, config: dict, point: Point, prompt_ids: list[str]) -> dict:
    """One flat record: sweep coordinates + bench_serving metrics + per-request details keyed by prompt id."""
    record = {"group": group, "config": config["name"], "kind": config["kind"], "budget": config.get("budget"),
              "depth": config.get("depth"), "width": config.get("width"), "ladder": config.get("ladder"),
              "point": point.key, "mode": point.mode, "max_concurrency": point.max_concurrency,
              "request_rate": None if math.isinf(point.request_rate) else point.request_rate,
              "num_prompts": point.num_prompts}
    record |= {k: raw.get(k) for k in METRIC_KEYS}
    record |= {k: raw.get(k) for k in DETAIL_KEYS}
    if len(record["generated_texts"] or []) != len(prompt_ids):
        raise RunError(f"{config['name']} {point.key}: {len(record['generated_texts'] or [])} outputs for "
                       f"{len(prompt_ids)} prompts")
    record["prompt_ids"] = list(prompt_ids)
    record["failed"] = sum(1 for e in record["errors"] if e)
    duration = raw.get("duration") or float("nan")
    retok, total = raw.get("total_output_tokens_retokenized") or 0, raw.get("total_output_tokens") or 0
    record["output_throughput_retokenized"] = retok / duration
    record["retokenized_ratio"] = retok / total if total else float("nan")  # ~1 when the token counts are sane
    info = raw.get("server_info") or {}
    record["server_info"] = {k: info[k] for k in SERVER_INFO_KEYS if k in info}
    record["budget_state"] = budget_report(info)  # cumulative since the server started (glue hook H8)
    return record


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


if __name__ == "__main__":  # the driver of run_points
    _drive(sys.argv[1], sys.argv[2])
