"""Round profile: per-phase wall time of a JETSPEC decode step against the plain decode step, inside real servers.

For each dtype, starts a plain server and one JETSPEC server per tree budget N (side by side, idle ones sleep;
the same flags besides the --speculative-* ones), all with JETSPEC_PROFILE set (jetspec_sglang/profiling.py: the
plugin brackets every decode step in Scheduler.run_batch and the worker marks its phases), and for each batch size
b sends b
concurrent greedy requests (ignore_eos, --tokens new tokens each) from the GSM8K evaluation split, to each server
in turn, --reps times (so plain and JETSPEC share the machine's load). Only decode steps that ran with exactly b
requests count, minus the first --skip of each run. Per (dtype, b, config):
median step period (start to start of consecutive decode steps, scheduler included), median of each phase, the
round / plain-step ratio (same dtype, same b) and the accept length tau from the responses.

    python bench/bench_round.py --out runs/bench_round        # the full sweep (~20 min on 2 quiet cores)
    python bench/bench_round.py --dtypes bfloat16 --budgets 8 16 --batch 1 --out runs/round_quick

Writes OUT/results.json (every summary), OUT/results.md (the README table), OUT/raw/*.jsonl (every step record)
and OUT/logs/. Timings are wall clock of a shared or quiet machine alike; the ratio and the phase shares come from
the same server process and are the robust part.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from jetspec_sglang.profiling import ENV, PHASES, read_records
from jetspec_sglang.serving import Server, ServerSpec

PHASE_LABELS = {"prepare": "prep", "draft_forward": "draft fwd", "topk": "top-K", "tree_build": "tree",
                "masks": "masks", "verify_prepare": "verify prep", "verify_forward": "verify fwd",
                "sample": "sample/accept", "kv_compaction": "KV compaction", "draft_kv_append": "draft-KV append",
                "worker_other": "worker other", "scheduler": "scheduler"}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="a prepared name (smollm2) or a folder")
    p.add_argument("--head", default=None, help="JETSPEC head folder (default: the shipped SmolLM2 head)")
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    p.add_argument("--budgets", type=int, nargs="+", default=[1, 4, 8, 16, 32],
                   help="tree budgets N (root included); 1 = the verify path without speculation (auto's fallback)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16], help="concurrent requests per run")
    p.add_argument("--depth", type=int, default=7, help="draft depth L (budgets N < L + 1 run at L = N - 1)")
    p.add_argument("--width", type=int, default=4, help="JETSPEC_TREE_WIDTH")
    p.add_argument("--draft-vocabs", nargs="+", default=["auto"], metavar="V",
                   help="JETSPEC_DRAFT_VOCAB of the JETSPEC servers, one server per value and budget (auto: the "
                        "head's draft_vocab.json default; full; a size), e.g. --draft-vocabs full auto")
    p.add_argument("--plain-packed", action="store_true",
                   help="also run a plain server with JETSPEC_CPU_PACKED_WEIGHTS=on (the bit-identical packed bf16 "
                        "weights a JETSPEC server uses on CPU by default): the table adds round / plain packed, the "
                        "like-for-like ratio (JETSPEC servers follow the environment's setting, default auto)")
    p.add_argument("--tokens", type=int, default=48, help="new tokens per request (ignore_eos)")
    p.add_argument("--skip", type=int, default=2, help="first decode steps of each run left out")
    p.add_argument("--reps", type=int, default=2, help="runs per server and batch size, alternating servers")
    p.add_argument("--instances", type=int, default=1,
                   help="start every server this many times, one set after the other; each number reported is the "
                        "median over instances (server instances differ by up to ~15 %% in step time on this CPU)")
    p.add_argument("--max-total-tokens", type=int, default=8192)
    p.add_argument("--mem-fraction-static", type=float, default=0.2,
                   help="server flag (on CPU a fraction of RAM, measured while other processes load; "
                        "--max-total-tokens caps the pool)")
    p.add_argument("--start-timeout", type=float, default=900)
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS of every server (default: torch's, all cores); 1 keeps a shared machine's "
                        "contention from inflating the OpenMP spin waits")
    p.add_argument("--out", default="runs/bench_round")
    return p.parse_args(argv)


def _prompts(model_dir: str, n: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    from jetspec_sglang.data import encode_chat, load_prompts

    return encode_chat(AutoTokenizer.from_pretrained(model_dir), load_prompts("gsm8k", "eval")[:n])


def _run_batch(server: Server, prompts, tokens: int) -> list[dict]:
    def one(ids):
        return server.generate(input_ids=ids, max_new_tokens=tokens, temperature=0, ignore_eos=True)

    with ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(one, prompts))


def _flush(server: Server) -> None:
    """A one-token request: its prefill batch makes the server write its decode-step records."""
    server.generate(text="Hi", max_new_tokens=1, temperature=0)


def summarize(records: list[dict]) -> dict | None:
    """Medians (ms) over decode-step records of one configuration and batch size."""
    steps = [r for r in records if r["period_s"] is not None]
    if not steps:
        return None
    med = lambda xs: statistics.median(xs) * 1e3  # noqa: E731 (ms)
    phases = {p: med([r["phases"].get(p, 0.0) for r in steps]) for p in PHASES if any(p in r["phases"] for r in steps)}
    out = {"steps": len(steps), "period_ms": med([r["period_s"] for r in steps]),
           "run_ms": med([r["run_s"] for r in steps]), "phases_ms": phases,
           "scheduler_ms": med([r["period_s"] - r["run_s"] for r in steps])}
    if phases:
        out["phases_ms"]["worker_other"] = med([r["run_s"] - sum(r["phases"].values()) for r in steps])
    out["phases_ms"]["scheduler"] = out["scheduler_ms"]
    return out


def measure_instances(specs: dict[str, ServerSpec], prompts, args, out: Path) -> dict[str, dict]:
    """`measure` --instances times (instance i under out/i when there are several); every number of a summary is
    the median over the instances' summaries. Returns {label: {bs: summary}}."""
    if args.instances == 1:
        return measure(specs, prompts, args, out)
    runs = [measure(specs, prompts, args, out / str(i)) for i in range(args.instances)]
    return {label: {bs: median_summary([run[label][bs] for run in runs if run[label].get(bs)])
                    for bs in args.batch} for label in specs}


def median_summary(summaries: list[dict]) -> dict | None:
    """Field by field (phases included) median of several instances' summaries; None when there are none.
    Example: period_ms 70, 66, 81 -> 70."""
    if not summaries:
        return None
    out = {k: statistics.median(s[k] for s in summaries) for k in summaries[0] if k != "phases_ms"}
    phases = {p for s in summaries for p in s["phases_ms"]}
    out["phases_ms"] = {p: statistics.median(s["phases_ms"].get(p, 0.0) for s in summaries) for p in phases}
    out["instances"] = len(summaries)
    return out


def measure(specs: dict[str, ServerSpec], prompts, args, out: Path) -> dict[str, dict]:
    """All servers of one dtype run at once (idle ones sleep); for each batch size the runs alternate between them
    --reps times, so plain and JETSPEC see the same machine load. Returns {label: {bs: summary}}."""
    raws = {}
    for label, spec in specs.items():
        raws[label] = out / "raw" / f"{label}.jsonl"
        raws[label].parent.mkdir(parents=True, exist_ok=True)
        raws[label].unlink(missing_ok=True)
        spec.env[ENV] = str(raws[label].resolve())
        if args.threads:
            spec.env["OMP_NUM_THREADS"] = str(args.threads)
    results = {label: {} for label in specs}
    with ExitStack() as stack:
        servers = {label: stack.enter_context(Server(spec, out / "logs" / f"{label}.log", timeout=args.start_timeout))
                   for label, spec in specs.items()}
        for server in servers.values():
            _run_batch(server, prompts[:1], 8)  # warm-up, not counted
            _flush(server)
        for bs in args.batch:
            records = {label: [] for label in specs}
            tokens = {label: [0, 0, 0.0] for label in specs}  # completion tokens, verify rounds, seconds
            for _ in range(args.reps):
                for label, server in servers.items():
                    seen = len(read_records(str(raws[label])))
                    t0 = time.perf_counter()
                    outs = _run_batch(server, prompts[:bs], args.tokens)
                    tokens[label][2] += time.perf_counter() - t0
                    _flush(server)
                    time.sleep(0.2)
                    steps = [r for r in read_records(str(raws[label]))[seen:] if r["bs"] == bs]
                    records[label] += steps[args.skip:]
                    tokens[label][0] += sum(o["meta_info"]["completion_tokens"] for o in outs)
                    tokens[label][1] += sum(o["meta_info"].get("spec_verify_ct", 0) for o in outs)
            for label in specs:
                summary = summarize(records[label])
                done, rounds, seconds = tokens[label]
                if summary is not None:
                    summary.update(tau=done / rounds if rounds else 1.0, client_tok_s=done / seconds)
                results[label][bs] = summary
                shown = summary and {k: round(v, 2) for k, v in summary.items() if k != "phases_ms"}
                print(f"  {label} b={bs}: {json.dumps(shown)}", flush=True)
    return results


def markdown(table: list[dict]) -> str:
    cols = ["draft_forward", "topk", "tree_build", "masks", "verify_prepare", "verify_forward", "sample",
            "kv_compaction", "draft_kv_append", "prepare", "worker_other", "scheduler"]
    packed = any("plain_packed_ms" in row for row in table)
    head = (["dtype", "b", "N", "L", "draft vocab", "plain step ms", "round ms", "round / plain"]
            + (["plain packed ms", "round / plain packed"] if packed else []) + ["tau"]
            + [PHASE_LABELS[c] for c in cols])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        s = row["jetspec"]
        parts = sum(s["phases_ms"].get(c, 0.0) for c in cols) or 1.0
        shares = [f"{100 * s['phases_ms'].get(c, 0.0) / parts:.0f}%" for c in cols]
        like = ([f"{row['plain_packed_ms']:.1f}", f"{row['ratio_packed']:.2f}"] if "plain_packed_ms" in row
                else ["", ""]) if packed else []
        lines.append("| " + " | ".join([row["dtype"], str(row["bs"]), str(row["N"]), str(row.get("L", "")),
                                         row.get("vocab", "auto"), f"{row['plain_ms']:.1f}",
                                         f"{s['period_ms']:.1f}", f"{row['ratio']:.2f}"] + like + [f"{s['tau']:.2f}"]
                                        + shares) + " |")
    return "\n".join(lines) + "\n"


def _depth(N: int, depth: int) -> int:
    """A tree of N nodes holds a path of at most N - 1 drafts: smaller budgets run at depth N - 1 (budget 1, no
    speculation, keeps the draft depth of the server it runs in)."""
    return depth if N == 1 else min(depth, N - 1)


def _budget_flags(N: int, depth: int) -> dict:
    """Server flags of budget N: budget 1 runs in a server of budget depth + 1 (the draft KV is kept as for any
    budget, so the step is what `auto` pays when it stops speculating)."""
    return dict(budget=depth + 1 if N == 1 else N, depth=_depth(N, depth))


def _budget_env(N: int) -> dict:
    """A fixed budget: the server default is JETSPEC_BUDGET=auto. Budget 1 is a one-entry schedule."""
    return {"JETSPEC_BUDGET_SCHEDULE": "1"} if N == 1 else {"JETSPEC_BUDGET": str(N)}


def _label(dtype: str, N: int, vocab: str, args) -> str:
    """Server label: dtype-N8, or dtype-N8-vfull when several draft vocabularies are compared."""
    return f"{dtype}-N{N}" + (f"-v{vocab}" if len(args.draft_vocabs) > 1 else "")


def main(argv=None) -> int:
    args = parse(argv)
    from jetspec_sglang.demo import shipped_head
    from jetspec_sglang.models import MODEL_DIRNAMES, prepare_model

    model = str(prepare_model(args.model)) if args.model in MODEL_DIRNAMES else args.model
    head = args.head or str(shipped_head())
    out = Path(args.out)
    prompts = _prompts(model, max(args.batch))
    running = max(args.batch)
    everything, table = {}, []
    for dtype in args.dtypes:
        base = dict(model=model, dtype=dtype, max_total_tokens=args.max_total_tokens, max_running_requests=running,
                    extra_args=["--mem-fraction-static", str(args.mem_fraction_static)])
        specs = {f"{dtype}-plain": ServerSpec(**base)}
        if args.plain_packed:
            specs[f"{dtype}-plainpacked"] = ServerSpec(**base, env={"JETSPEC_CPU_PACKED_WEIGHTS": "on"})
        for N in args.budgets:
            for vocab in args.draft_vocabs:
                specs[_label(dtype, N, vocab, args)] = ServerSpec(
                    **base, head=head, **_budget_flags(N, args.depth),
                    env={"JETSPEC_TREE_WIDTH": str(args.width), "JETSPEC_DRAFT_VOCAB": vocab, **_budget_env(N)})
        res = measure_instances(specs, prompts, args, out)
        everything.update({label.replace("-", "/", 1): r for label, r in res.items()})
        plain, plain_packed = res[f"{dtype}-plain"], res.get(f"{dtype}-plainpacked", {})
        for N, vocab in ((N, vocab) for N in args.budgets for vocab in args.draft_vocabs):
            spec_res = res[_label(dtype, N, vocab, args)]
            for bs in args.batch:
                if spec_res.get(bs) and plain.get(bs):
                    table.append({"dtype": dtype, "bs": bs, "N": N, "L": _depth(N, args.depth), "vocab": vocab,
                                  "plain_ms": plain[bs]["period_ms"],
                                  "jetspec": spec_res[bs], "ratio": spec_res[bs]["period_ms"] / plain[bs]["period_ms"]})
                    if plain_packed.get(bs):
                        table[-1].update(plain_packed_ms=plain_packed[bs]["period_ms"],
                                         ratio_packed=spec_res[bs]["period_ms"] / plain_packed[bs]["period_ms"])
        (out / "results.json").write_text(json.dumps({"args": vars(args), "runs": everything, "table": table},
                                                     indent=1))
    table.sort(key=lambda r: (r["dtype"], r["bs"], r["N"], args.draft_vocabs.index(r["vocab"])))
    md = markdown(table)
    (out / "results.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
