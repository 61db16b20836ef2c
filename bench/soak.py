"""Soak a live JETSPEC server: many mixed requests at a fixed concurrency, with dropped clients, API aborts and
malformed requests mixed in; then check that nothing broke.

Workload (seeded): real prompts (GSM8K / HumanEval / MT-Bench held-out; `--long-share` of long ShareGPT ones),
mixed max_new_tokens, greedy and sampled, /generate (plain and streaming) and the OpenAI API. `--abort-share` of the
requests are dropped (client closes the stream after a few chunks, or the request is cancelled with
/abort_request); `--malformed-share` are bad (invalid JSON, out-of-vocabulary ids, empty prompt, refused
features). Pass criteria (the "verdict"): zero 5xx and transport errors, every well-formed request completes,
every malformed one gets a 4xx, the greedy outputs of a sampled subset equal plain decoding's (a plain server,
afterwards), KV in use returns to 0, the server's RSS (process tree) ends within `--rss-margin-mb` of its level
after warm-up, all within `--deadline` seconds (the run stops by itself).

    python bench/soak.py --requests 1000 --out runs/soak.json     # starts JETSPEC (SmolLM2 + shipped head), then plain
    python bench/soak.py --url http://127.0.0.1:30000 --server-pid PID [--plain-url URL] --requests 200
Prints a human summary (stderr) and writes the JSON summary (--out, else stdout). Exit code 1 if the verdict fails.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import random
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

if str(Path(__file__).resolve().parent) not in sys.path:  # bench/ is not a package; live_server.py sits here
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_server import loads, post, rss_mb, stream, wait_idle  # noqa: E402

MAX_NEW_CHOICES = (4, 8, 16, 32, 64, 128)
MALFORMED_KINDS = ("bad_json", "bad_ids", "empty_prompt", "refused_penalty", "refused_min_p")
ABORT_KINDS = ("disconnect", "abort_api")
OK_KINDS = ("generate", "generate_stream", "completions", "chat", "sampled")


@dataclass(frozen=True)
class SoakConfig:
    requests: int = 1000  # measured requests (warm-up not included)
    concurrency: int = 16
    max_new_tokens: tuple[int, ...] = MAX_NEW_CHOICES  # drawn uniformly per request
    long_share: float = 0.1  # share of prompts from long ShareGPT conversations
    long_tokens: tuple[int, int] = (400, 1500)  # prompt-length window of the long prompts
    abort_share: float = 0.05
    malformed_share: float = 0.05
    compare: int = 48  # greedy /generate requests re-run on a plain server (0 = no comparison)
    warmup: int = 32  # requests before the RSS baseline (one or two waves of the same mix)
    rss_margin_mb: float = 300.0  # allowed RSS growth of the server tree after warm-up
    kv_timeout: float = 120.0  # seconds for KV in use to return to 0 at the end
    request_timeout: float = 600.0  # per request, client side
    deadline: float = 3600.0  # whole run; no new request starts after it
    seed: int = 0


# ---------------------------------------------------------------- workload


@dataclass
class Job:
    index: int
    kind: str  # one of OK_KINDS, ABORT_KINDS, MALFORMED_KINDS
    prompt: list[int]  # token ids (chat template applied)
    text: str  # the user message (for the chat API)
    max_new: int
    compare: bool = False  # greedy /generate re-run on the plain server


def load_prompts(model: str, cfg: SoakConfig) -> tuple[list[tuple], list[tuple], int]:
    """(short prompts, long prompts, vocab size); a prompt is (token ids of the target's chat template, text)."""
    from transformers import AutoConfig, AutoTokenizer

    from jetspec_sglang.data import encode_chat
    from jetspec_sglang.data import load_prompts as records_of

    tok = AutoTokenizer.from_pretrained(model)
    short = records_of("gsm8k", "eval")[:60] + records_of("humaneval", "eval")[:30] + records_of("mtbench", "eval")[:30]
    long = records_of("sharegpt", "eval") + records_of("sharegpt", "train")[:1500]  # not training: any split
    short, long = [list(zip(encode_chat(tok, rs), [r.text for r in rs])) for rs in (short, long)]
    lo, hi = cfg.long_tokens
    long = [p for p in long if lo <= len(p[0]) <= hi]
    if not long:
        raise ValueError(f"no ShareGPT eval prompt has {lo}..{hi} tokens; widen --long-tokens")
    return short, long, int(AutoConfig.from_pretrained(model).vocab_size)


def make_jobs(cfg: SoakConfig, short, long, n: int, first: int = 0, rng: random.Random | None = None) -> list[Job]:
    rng = rng or random.Random(cfg.seed)
    n_abort, n_bad = round(n * cfg.abort_share), round(n * cfg.malformed_share)
    kinds = ([ABORT_KINDS[i % 2] for i in range(n_abort)] + [MALFORMED_KINDS[i % len(MALFORMED_KINDS)]
             for i in range(n_bad)] + [OK_KINDS[i % len(OK_KINDS)] for i in range(n - n_abort - n_bad)])
    rng.shuffle(kinds)
    jobs = []
    for i, kind in enumerate(kinds):
        ids, text = rng.choice(long) if rng.random() < cfg.long_share else rng.choice(short)
        jobs.append(Job(first + i, kind, ids, text, rng.choice(cfg.max_new_tokens)))
    greedy = [j for j in jobs if j.kind == "generate"]
    for j in rng.sample(greedy, min(cfg.compare, len(greedy))):
        j.compare = True
    return jobs


def greedy(job: Job) -> dict:
    return {"input_ids": job.prompt, "sampling_params": {"max_new_tokens": job.max_new, "temperature": 0}}


def run_job(url: str, job: Job, vocab: int, cfg: SoakConfig, deadline: float) -> dict:
    """One request; a record with kind, status, ok, seconds, output ids (greedy) and an error text if any."""
    start = time.time()
    t = max(1.0, min(cfg.request_timeout, deadline - start))  # the whole run stops by the deadline
    rec = {"index": job.index, "kind": job.kind, "status": None, "ok": False, "error": None, "prompt_tokens":
           len(job.prompt), "max_new": job.max_new}
    try:
        if job.kind in ("generate", "sampled"):
            payload = greedy(job)
            if job.kind == "sampled":
                payload["sampling_params"].update(temperature=0.8, top_p=0.95, sampling_seed=job.index)
            status, body = post(url, "/generate", payload, t)
            rec.update(status=status, ok=status == 200 and len(body.get("output_ids", [])) >= 1)
            if status == 200:
                meta = body["meta_info"]
                rec.update(output_ids=body["output_ids"], completion_tokens=meta["completion_tokens"],
                           verify_ct=meta.get("spec_verify_ct", 0))
        elif job.kind == "generate_stream":
            status, chunks = stream(url, greedy(job), timeout=t)
            finish = chunks[-1]["meta_info"]["finish_reason"] if chunks and "meta_info" in chunks[-1] else None
            rec.update(status=status, ok=status == 200 and finish is not None and finish["type"] != "abort")
        elif job.kind in ("completions", "chat"):
            common = {"model": "default", "max_tokens": job.max_new, "temperature": 0}
            if job.kind == "completions":
                status, body = post(url, "/v1/completions", dict(common, prompt=job.prompt), t)
            else:
                status, body = post(url, "/v1/chat/completions",
                                    dict(common, messages=[{"role": "user", "content": job.text}]), t)
            rec.update(status=status, ok=status == 200 and body["choices"][0]["finish_reason"] is not None)
        elif job.kind == "disconnect":
            payload = greedy(job)
            payload["sampling_params"].update(max_new_tokens=256, ignore_eos=True)
            status, chunks = stream(url, payload, stop_after=2, timeout=t)
            rec.update(status=status, ok=status == 200 and len(chunks) == 2)
        elif job.kind == "abort_api":
            rid = f"soak-abort-{job.index}"
            payload = dict(greedy(job), rid=rid)
            payload["sampling_params"].update(max_new_tokens=256, ignore_eos=True)
            aborted = {}

            def abort_once(i, chunk):
                if i == 0:
                    aborted["status"] = post(url, "/abort_request", {"rid": rid}, 30)[0]

            status, chunks = stream(url, payload, on_chunk=abort_once, timeout=t)
            finish = (chunks[-1].get("meta_info") or {}).get("finish_reason") if chunks else None
            # The stream ends with an abort, or (rarely) the request finished before the abort reached it.
            rec.update(status=status, ok=status == 200 and aborted.get("status") == 200 and finish is not None)
        else:
            status, body = post(url, *malformed(job, vocab), t)
            rec.update(status=status, ok=400 <= status < 500, error=None if 400 <= status < 500 else str(body)[:300])
    except Exception as e:  # a transport failure is a result of the soak, recorded and counted as a failure
        rec.update(error=f"{type(e).__name__}: {e}")
    rec["seconds"] = time.time() - start
    if not rec["ok"] and rec["error"] is None:
        rec["error"] = f"status {rec['status']}"
    return rec


def malformed(job: Job, vocab: int) -> tuple[str, object]:
    sp = {"max_new_tokens": job.max_new, "temperature": 0}
    if job.kind == "bad_json":
        return "/generate", b'{"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": '
    if job.kind == "bad_ids":
        return "/generate", {"input_ids": job.prompt[:-1] + [vocab + job.index], "sampling_params": sp}
    if job.kind == "empty_prompt":
        return "/generate", {"text": "", "sampling_params": sp}
    if job.kind == "refused_penalty":
        return "/generate", {"input_ids": job.prompt, "sampling_params": dict(sp, frequency_penalty=0.5)}
    return "/generate", {"input_ids": job.prompt, "sampling_params": dict(sp, min_p=0.1, temperature=0.7)}


# ---------------------------------------------------------------- the run


def run_wave(url: str, jobs: list[Job], vocab: int, cfg: SoakConfig, deadline: float, desc: str) -> list[dict]:
    records, lock = [], threading.Lock()

    def task(job):
        if time.time() > deadline:
            return {"index": job.index, "kind": job.kind, "ok": False, "status": None, "error": "deadline",
                    "seconds": 0.0}
        return run_job(url, job, vocab, cfg, deadline)

    with cf.ThreadPoolExecutor(cfg.concurrency) as pool, tqdm(total=len(jobs), desc=desc, unit="req") as bar:
        for rec in pool.map(task, jobs):
            with lock:
                records.append(rec)
            bar.update(1)
    return records


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


@dataclass
class SoakRun:
    """What one soak against a live server measured (before any comparison with plain decoding)."""
    jobs: list[Job]
    records: list[dict]
    wall: float  # seconds of the measured wave
    idle: bool  # KV in use and running/waiting requests back to 0 within kv_timeout
    kv_wait: float
    last_loads: dict
    rss_before: float  # MB, server tree after warm-up
    rss_after: float  # MB, after the soak and the drain
    started: float
    deadline: float


def run_soak(cfg: SoakConfig, model: str, url: str, server_pid: int) -> SoakRun:
    started = time.time()
    deadline = started + cfg.deadline
    short, long, vocab = load_prompts(model, cfg)
    warm, jobs = plan(cfg, short, long)
    run_wave(url, warm, vocab, cfg, deadline, "warm-up")
    wait_idle(url, cfg.kv_timeout)
    rss_before = rss_mb(server_pid)
    start = time.time()
    records = run_wave(url, jobs, vocab, cfg, deadline, "soak")
    wall = time.time() - start
    idle, kv_wait, last_loads = wait_idle(url, cfg.kv_timeout)
    return SoakRun(jobs, records, wall, idle, kv_wait, last_loads, rss_before, rss_mb(server_pid), started, deadline)


def plan(cfg: SoakConfig, short, long) -> tuple[list[Job], list[Job]]:
    """(warm-up jobs, measured jobs), the same for the same seed; warm-up ends with the longest prompt."""
    rng = random.Random(cfg.seed)
    warm = make_jobs(SoakConfig(**dict(asdict(cfg), compare=0)), short, long, cfg.warmup, first=10**6, rng=rng)
    ids, text = max(long, key=lambda p: len(p[0]))
    warm.append(Job(10**6 + cfg.warmup, "generate", ids, text, max(cfg.max_new_tokens)))
    return warm, make_jobs(cfg, short, long, cfg.requests, rng=rng)


def soak(cfg: SoakConfig, model: str, url: str, server_pid: int, plain_url: str | None = None) -> dict:
    """Run the soak against a live server; the plain comparison runs on `plain_url` afterwards (if given)."""
    run = run_soak(cfg, model, url, server_pid)
    comparison = compare_with_plain(plain_url, run, cfg) if plain_url and cfg.compare else None
    return summarize(cfg, run, comparison)


def compare_with_plain(plain_url: str, run: SoakRun, cfg: SoakConfig) -> dict:
    by_index = {r["index"]: r for r in run.records}
    chosen = [j for j in run.jobs if j.compare and by_index[j.index]["ok"]]
    with cf.ThreadPoolExecutor(cfg.concurrency) as pool:
        plain = list(tqdm(pool.map(lambda j: post(plain_url, "/generate", greedy(j), cfg.request_timeout), chosen),
                          total=len(chosen), desc="plain", unit="req"))
    mismatches = [{"index": j.index, "prompt_tokens": len(j.prompt), "max_new": j.max_new,
                   "jetspec": by_index[j.index]["output_ids"], "plain": body.get("output_ids"), "status": status}
                  for j, (status, body) in zip(chosen, plain)
                  if status != 200 or body.get("output_ids") != by_index[j.index]["output_ids"]]
    return {"compared": len(chosen), "equal": len(chosen) - len(mismatches), "mismatches": mismatches[:5]}


def summarize(cfg: SoakConfig, run: SoakRun, comparison: dict | None) -> dict:
    records, wall = run.records, run.wall
    statuses: dict[str, int] = {}
    for r in records:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    groups = {"well_formed": OK_KINDS, "aborted": ABORT_KINDS, "malformed": MALFORMED_KINDS}
    counts = {g: {"sent": sum(r["kind"] in ks for r in records), "ok": sum(r["kind"] in ks and r["ok"]
              for r in records)} for g, ks in groups.items()}
    latency = [r["seconds"] for r in records if r["kind"] in OK_KINDS and r["ok"]]
    tokens = sum(r.get("completion_tokens", 0) for r in records)
    rounds = sum(r.get("verify_ct", 0) for r in records)
    server_errors = sum(1 for r in records if r["status"] is not None and r["status"] >= 500)
    transport_errors = sum(1 for r in records if r["status"] is None)
    failures = [r for r in records if not r["ok"]]
    verdict = {
        "no_5xx": server_errors == 0,
        "no_transport_errors": transport_errors == 0,
        "all_requests_ok": not failures,
        "greedy_equals_plain": comparison is None or comparison["equal"] == comparison["compared"],
        "kv_returned_to_zero": run.idle,
        "rss_within_margin": run.rss_after - run.rss_before <= cfg.rss_margin_mb,
        "within_deadline": time.time() <= run.deadline,
    }
    return {
        "config": asdict(cfg), "verdict": verdict, "passed": all(verdict.values()),
        "counts": counts, "statuses": statuses, "server_errors": server_errors, "transport_errors": transport_errors,
        "failures": [{k: r.get(k) for k in ("index", "kind", "status", "error")} for r in failures[:10]],
        "latency_s": {"p50": percentile(latency, 50), "p99": percentile(latency, 99), "max": max(latency or [0])},
        "soak_seconds": wall, "total_seconds": time.time() - run.started,
        "requests_per_s": len(records) / wall if wall else None,
        "greedy_tokens": tokens, "accept_length": tokens / rounds if rounds else None,
        "kv": {"idle": run.idle, "seconds_to_idle": run.kv_wait, "last": run.last_loads},
        "rss_mb": {"after_warmup": run.rss_before, "after_soak": run.rss_after,
                   "growth": run.rss_after - run.rss_before, "margin": cfg.rss_margin_mb},
        "comparison": comparison,
    }


def human(summary: dict) -> str:
    c, lat, rss = summary["counts"], summary["latency_s"], summary["rss_mb"]
    cmp_ = summary["comparison"] or {"equal": "-", "compared": "-"}
    lines = [
        f"soak: {'PASS' if summary['passed'] else 'FAIL'}  {summary['soak_seconds']:.0f} s, "
        f"{summary['requests_per_s']:.2f} req/s, statuses {summary['statuses']}",
        "  " + ", ".join(f"{g} {v['ok']}/{v['sent']} ok" for g, v in c.items()),
        f"  latency p50 {lat['p50'] or 0:.2f} s  p99 {lat['p99'] or 0:.2f} s; accept length "
        f"{summary['accept_length'] or 0:.2f}; greedy == plain {cmp_['equal']}/{cmp_['compared']}",
        f"  KV idle after {summary['kv']['seconds_to_idle']:.1f} s: {summary['kv']['idle']}; RSS "
        f"{rss['after_warmup']:.0f} -> {rss['after_soak']:.0f} MB (growth {rss['growth']:+.0f}, margin "
        f"{rss['margin']:.0f})",
    ] + [f"  failed check: {k}" for k, v in summary["verdict"].items() if not v]
    return "\n".join(lines)


def parse_args(argv=None) -> tuple[SoakConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = SoakConfig()
    for name, value in asdict(d).items():
        if isinstance(value, tuple):
            p.add_argument("--" + name.replace("_", "-"), type=int, nargs="+", default=list(value))
        else:
            p.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    p.add_argument("--model", default=None, help="target folder (default: SmolLM2, prepared offline)")
    p.add_argument("--head", default=None, help="JetSpec head (default: the shipped SmolLM2 head)")
    p.add_argument("--budget", type=int, default=16)
    p.add_argument("--depth", type=int, default=15)
    p.add_argument("--url", default=None, help="attach to this JETSPEC server instead of starting one")
    p.add_argument("--server-pid", type=int, default=None, help="with --url: the server's pid (RSS)")
    p.add_argument("--plain-url", default=None, help="with --url: a plain server for the comparison")
    p.add_argument("--out", default=None, help="JSON summary file (default: stdout)")
    a = p.parse_args(argv)
    fields = {k: (tuple(getattr(a, k)) if isinstance(v, tuple) else getattr(a, k)) for k, v in asdict(d).items()}
    if a.url and a.server_pid is None:
        p.error("--url needs --server-pid (the RSS check reads the server's process tree)")
    return SoakConfig(**fields), a


def main(argv=None) -> int:
    cfg, a = parse_args(argv)
    from jetspec_sglang.models import prepare_model

    model = a.model or str(prepare_model("smollm2"))
    if a.url:
        summary = soak(cfg, model, a.url, a.server_pid, a.plain_url)
    else:
        summary = launch_and_soak(cfg, model, a)
    text = json.dumps(summary, indent=2)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    print(human(summary), file=sys.stderr)
    return 0 if summary["passed"] else 1


def launch_and_soak(cfg: SoakConfig, model: str, a) -> dict:
    """JETSPEC server for the soak, then (after it stopped) a plain server for the comparison subset."""
    from jetspec_sglang.demo import shipped_head
    from jetspec_sglang.serving import Server, ServerSpec

    logs = tempfile.mkdtemp(prefix="jetspec-soak-")
    head = a.head or str(shipped_head())
    spec = ServerSpec(model=model, head=head, budget=a.budget, depth=a.depth)
    with Server(spec, f"{logs}/jetspec.log") as server:
        run = run_soak(cfg, model, server.url, server.proc.pid)
    comparison = None
    if cfg.compare:
        with Server(ServerSpec(model=model), f"{logs}/plain.log") as plain:
            comparison = compare_with_plain(plain.url, run, cfg)
    return dict(summarize(cfg, run, comparison), logs=logs)


if __name__ == "__main__":
    sys.exit(main())
