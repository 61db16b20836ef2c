"""Serving benchmark: plain decoding vs JETSPEC (fixed trees, chain, auto budget, ladders) on real prompts.

Starts one SGLang server at a time on 127.0.0.1 (or attaches to servers you run) and drives each with SGLang's
own client, `sglang.benchmark.serving` (serving_client.py): greedy, EOS honoured, a fixed output cap, prompts from
the GSM8K/HumanEval/MT-Bench/ShareGPT evaluation splits rendered with the target's chat template, swept over
max-concurrency and Poisson request rates. Every JETSPEC output is compared with plain decoding's for the same
prompt (serving_report.py); any mismatch makes the exit code 1 unless --allow-mismatch (3: a run failed).
JETSPEC's auto budget (the server default) runs beside the fixed budgets unless --no-auto; the report shows, per
point, the budgets it chose and its estimates (from /get_server_info).
Writes under --out: results.json (every record), results.md, throughput_vs_concurrency.png,
latency_vs_rate.png, prompts/ (the request files), raw/ (bench_serving's own JSONL), logs/ (servers, clients).

CPU (SmolLM2-135M bf16, plain + trees 8/16 at depth 7 width 4 + chain; concurrency 1/4/16, rates 1/2 req/s; bf16
outputs are not token-exact - plain bf16 differs from itself across batch shapes - so mismatches are reported and
do not fail the run; add --dtype float32 for the exact, failing parity check):
    python bench/bench_serving.py --cpu-quick --head jetspec_sglang/heads/smollm2-135m-instruct \
        --out runs/bench_serving_cpu

GPU (Qwen3-8B bf16; servers and client run with HF_HUB_OFFLINE=1, so download first and pass the folders):
    hf download Qwen/Qwen3-8B --local-dir models/Qwen3-8B
    hf download JetSpec/jetspec-qwen3-8b --local-dir models/jetspec-qwen3-8b
    python bench/bench_serving.py --model models/Qwen3-8B --head models/jetspec-qwen3-8b --device cuda --dtype auto \
        --budgets 32 64 128 256 --depth 15 --width 7 --ladder 4:128,16:64,32:32,64:16 \
        --concurrency 1 2 4 8 16 32 64 --request-rates 1 2 4 8 16 \
        --prompts-per-dataset 64 --output-len 512 --waves 2 --min-prompts 16 --rate-num-prompts 128 \
        --max-total-tokens 262144 --mem-fraction-static 0.8 --run-timeout 1800 \
        --server-args "--attention-backend flashinfer --speculative-draft-attention-backend flashinfer" \
        --out runs/bench_serving_qwen3_8b

Server instances on a CPU differ (+-20 % step time between starts of the same config, each keeping the speed it
starts with): `--repeats R` starts every config R times, the configs taking turns, and reports the median
instance with the range; ratios are median over median, parity is checked per instance:
    python bench/bench_serving.py --cpu-quick --head jetspec_sglang/heads/smollm2-135m-instruct --budgets 8 16 \
        --no-chain --concurrency 1 --request-rates --groups gsm8k+humaneval --repeats 5 --out runs/serving_c1_r5

Your own servers (name the plain one 'plain': it is the reference of ratios and parity):
    python bench/bench_serving.py --attach plain=http://127.0.0.1:30000 --attach jetspec-b64=http://127.0.0.1:30001
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from serving_client import RunError, bench_argv, check_prompt_lens, make_record, prompt_order, run_points, \
    sweep_points
from serving_configs import attached_configs, head_depth, server_spec, sweep_configs
from serving_report import add_ratios, combine_repeats, markdown, parity, parity_failures, plain_consistency, plot

# --cpu-quick: SmolLM2-135M bf16 on a 2-core CPU (see the module docstring for the time it takes).
CPU_QUICK = dict(model="smollm2", device="cpu", dtype="bfloat16", budgets=[8, 16], depth=7, width=4,
                 concurrency=[1, 4, 16], request_rates=[1.0, 2.0], groups=["gsm8k+humaneval", "mtbench+sharegpt"],
                 prompts_per_dataset=8, output_len=64, waves=1, min_prompts=4, rate_num_prompts=8,
                 max_total_tokens=8192, mem_fraction_static=0.2, run_timeout=300, start_timeout=300)
GROUP_DATASETS = ("gsm8k", "humaneval", "mtbench", "sharegpt")
INEXACT_DTYPES = ("bfloat16", "float16")  # greedy parity with plain decoding is exact in float32 only


@dataclass(frozen=True)
class Args:
    model: str | None
    head: str | None
    attach: tuple
    out: Path
    device: str
    dtype: str | None
    budgets: tuple
    depth: int | None
    width: int
    chain: bool
    auto: bool
    ladders: tuple
    draft_vocabs: tuple
    plain_packed: bool
    groups: tuple
    prompts_per_dataset: int
    output_len: int
    concurrency: tuple
    request_rates: tuple
    waves: int
    min_prompts: int
    rate_num_prompts: int
    rate_max_concurrency: int | None
    max_total_tokens: int
    max_running_requests: int | None
    mem_fraction_static: float | None
    decode_log_interval: int
    server_args: tuple
    seed: int
    warmup_requests: int
    repeats: int
    run_timeout: float
    start_timeout: float
    allow_mismatch: bool
    resume: bool
    dry_run: bool


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-quick", action="store_true",
                   help=f"preset for a 2-core CPU (explicit flags win): {CPU_QUICK}")
    p.add_argument("--model", default=None,
                   help="target: a prepared name (smollm2, tiny-qwen3), folder or hub id (attached: from the server)")
    p.add_argument("--head", default=None, help="JETSPEC head folder or hub id (needed unless only plain runs)")
    p.add_argument("--attach", action="append", default=[], metavar="[NAME=]URL",
                   help="benchmark a server you run instead of starting any (repeatable; name one 'plain')")
    p.add_argument("--out", default="runs/bench_serving")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", help="server --dtype; 'auto' passes none")
    p.add_argument("--budgets", type=int, nargs="*", default=[16, 64], help="JETSPEC tree budgets (root included)")
    p.add_argument("--depth", type=int, default=None, help="draft depth L (default: the head's block_size - 1)")
    p.add_argument("--width", type=int, default=7, help="JETSPEC_TREE_WIDTH of the tree and ladder configs")
    p.add_argument("--no-chain", dest="chain", action="store_false", help="skip the chain config (width 1, L+1)")
    p.add_argument("--no-auto", dest="auto", action="store_false",
                   help="skip the auto-budget config (JETSPEC_BUDGET=auto up to the largest --budgets value)")
    p.add_argument("--draft-vocabs", nargs="*", default=[], metavar="V",
                   help="also run each tree and auto config with JETSPEC_DRAFT_VOCAB=V (named NAME-vV), e.g. full")
    p.add_argument("--plain-packed", action="store_true",
                   help="also run plain-packed: plain decoding with JETSPEC_CPU_PACKED_WEIGHTS=on (the packed CPU "
                        "weights JETSPEC servers use by default; bit-identical outputs), the like-for-like reference")
    p.add_argument("--ladder", action="append", default=[], metavar="M:B,...",
                   help="a JETSPEC_BUDGET_LADDER config, e.g. 1:16,4:8,16:1 (repeatable)")
    p.add_argument("--groups", nargs="+", default=["gsm8k+humaneval", "mtbench+sharegpt"],
                   help=f"dataset groups, '+'-joined from {GROUP_DATASETS}; one table section each")
    p.add_argument("--prompts-per-dataset", type=int, default=32, help="first N eval prompts of each dataset")
    p.add_argument("--output-len", type=int, default=256, help="max new tokens per request (EOS honoured)")
    p.add_argument("--concurrency", type=int, nargs="*", default=[1, 2, 4, 8, 16])
    p.add_argument("--request-rates", type=float, nargs="*", default=[0.5, 1.0, 2.0])
    p.add_argument("--waves", type=int, default=2, help="a concurrency-c point sends waves*c prompts ...")
    p.add_argument("--min-prompts", type=int, default=8, help="... but at least this many (and at most the group's)")
    p.add_argument("--rate-num-prompts", type=int, default=32, help="prompts per request-rate point")
    p.add_argument("--rate-max-concurrency", type=int, default=None, help="cap at rate points (default: largest -c)")
    p.add_argument("--max-total-tokens", type=int, default=8192, help="server KV pool size in tokens")
    p.add_argument("--mem-fraction-static", type=float, default=None,
                   help="server flag (on CPU a fraction of RAM; ServerSpec's 0.05 leaves no KV cache when RAM is "
                        "short; --max-total-tokens still caps the pool)")
    p.add_argument("--max-running-requests", type=int, default=None,
                   help="server cap (default: the largest concurrency of the sweep)")
    p.add_argument("--decode-log-interval", type=int, default=1,
                   help="server flag; /server_info's accept length counts only whole intervals")
    p.add_argument("--server-args", default="", help="extra flags for every started server, one shell-quoted string")
    p.add_argument("--seed", type=int, default=42, help="bench_serving --seed (prompt order, Poisson arrivals)")
    p.add_argument("--warmup-requests", type=int, default=1, help="before the first point of each server")
    p.add_argument("--repeats", type=int, default=1,
                   help="start every config this many times, the configs taking turns (plain, a, b, plain, a, b, "
                        "...); tables show the median instance and the range (a CPU server keeps the speed it "
                        "starts with, +-20 %% between starts)")
    p.add_argument("--run-timeout", type=float, default=1800, help="seconds per bench_serving run")
    p.add_argument("--start-timeout", type=float, default=900, help="seconds for a server to become healthy")
    p.add_argument("--allow-mismatch", action="store_true", help="exit 0 even if outputs differ from plain")
    p.add_argument("--resume", action="store_true", help="reuse raw/ results of an earlier run in --out")
    p.add_argument("--dry-run", action="store_true", help="print the plan (configs x groups x points) and exit")
    return p


def parse(argv=None) -> Args:
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.cpu_quick:
        parser.set_defaults(**CPU_QUICK)
    a = parser.parse_args(argv)
    for group in a.groups:
        bad = [d for d in group.split("+") if d not in GROUP_DATASETS]
        if bad:
            parser.error(f"--groups {group!r}: unknown datasets {bad}; use '+'-joined names from {GROUP_DATASETS}")
    if a.model is None and not a.attach:
        parser.error("--model is required to start servers (or use --cpu-quick, or --attach URL)")
    if not a.concurrency and not a.request_rates:
        parser.error("nothing to run: give --concurrency and/or --request-rates values")
    if any(c < 1 for c in a.concurrency) or any(r <= 0 for r in a.request_rates):
        parser.error(f"--concurrency {a.concurrency} must be >= 1 and --request-rates {a.request_rates} > 0")
    if a.repeats < 1 or (a.repeats > 1 and a.attach):
        parser.error(f"--repeats {a.repeats}: use >= 1, and 1 with --attach (restarts need servers this bench starts)")
    if a.output_len < 4:
        parser.error(f"--output-len {a.output_len}: bench_serving needs at least 4")
    speculative = bool(a.budgets or a.chain or a.ladder or a.auto)
    if not a.attach and speculative and not a.head:
        parser.error("JETSPEC configs need --head DIR (or pass --budgets with no values, --no-chain, --no-auto and "
                     "no --ladder)")
    rate_cap = a.rate_max_concurrency or (max(a.concurrency) if a.concurrency else None)
    running = a.max_running_requests or max(a.concurrency + ([rate_cap] if rate_cap else []))
    depth = a.depth if a.depth is not None else (head_depth(a.head) if a.head else None)
    return Args(model=a.model, head=a.head, attach=tuple(a.attach), out=Path(a.out), device=a.device,
                dtype=None if a.dtype == "auto" else a.dtype, budgets=tuple(a.budgets), depth=depth, width=a.width,
                chain=a.chain, auto=a.auto, ladders=tuple(a.ladder), draft_vocabs=tuple(a.draft_vocabs),
                plain_packed=a.plain_packed, groups=tuple(a.groups),
                prompts_per_dataset=a.prompts_per_dataset, output_len=a.output_len,
                concurrency=tuple(a.concurrency), request_rates=tuple(a.request_rates), waves=a.waves,
                min_prompts=a.min_prompts, rate_num_prompts=a.rate_num_prompts, rate_max_concurrency=rate_cap,
                max_total_tokens=a.max_total_tokens, max_running_requests=running,
                mem_fraction_static=a.mem_fraction_static, decode_log_interval=a.decode_log_interval,
                server_args=tuple(shlex.split(a.server_args)), seed=a.seed, warmup_requests=a.warmup_requests,
                repeats=a.repeats, run_timeout=a.run_timeout, start_timeout=a.start_timeout,
                allow_mismatch=a.allow_mismatch, resume=a.resume, dry_run=a.dry_run)


def resolve_model(args: Args, configs) -> str:
    """A prepared name becomes its folder; without --model, an attached server's /model_info names it."""
    from jetspec_sglang.models import MODEL_DIRNAMES, prepare_model

    if args.model is None:
        url = configs[0].url + "/model_info"
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                info = json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise SystemExit(f"--attach: GET {url} failed ({e}); pass --model (the target's folder or hub id)")
        return info.get("tokenizer_path") or info["model_path"]
    return str(prepare_model(args.model)) if args.model in MODEL_DIRNAMES else args.model


def write_prompt_files(args: Args, model: str) -> dict[str, tuple[Path, dict[str, int]]]:
    """group -> (ShareGPT file, prompt id -> token count as bench_serving counts it)."""
    from transformers import AutoTokenizer

    from jetspec_sglang.data import load_prompts, render_chat, write_bench_sharegpt

    tokenizer = AutoTokenizer.from_pretrained(model)
    files = {}
    for group in args.groups:
        records = [r for d in group.split("+") for r in load_prompts(d, "eval")[: args.prompts_per_dataset]]
        path = write_bench_sharegpt(args.out / "prompts" / f"{group}.json", records, tokenizer)
        lens = {r.id: len(tokenizer.encode(text)) for r, text in zip(records, render_chat(tokenizer, records))}
        files[group] = (path, lens)
    return files


def server_flags(args: Args) -> list[str]:
    """Flags added to every started server; --server-args come last, so they win over the same flag here."""
    flags = ["--decode-log-interval", str(args.decode_log_interval)]
    if args.mem_fraction_static is not None:
        flags += ["--mem-fraction-static", f"{args.mem_fraction_static:g}"]
    return flags + list(args.server_args)


def run_sweep(args: Args, configs, files: dict, model: str, results: dict, save) -> None:
    """Every repeat x config x group x point; one server alive at a time, a fresh one per config and repeat (the
    configs take turns within each repeat); records (with their 'repeat') and failures land in `results`."""
    from jetspec_sglang.serving import Server

    points = {g: sweep_points(args.concurrency, args.request_rates, len(lens), args.waves, args.min_prompts,
                              args.rate_num_prompts, args.rate_max_concurrency) for g, (_, lens) in files.items()}
    bar = tqdm(total=args.repeats * len(configs) * sum(map(len, points.values())), desc="bench_serving",
               unit="run", file=sys.stderr)
    for repeat, config in ((k, c) for k in range(args.repeats) for c in configs):
        tag = f"_r{repeat + 1}" if args.repeats > 1 else ""  # one run keeps the layout of earlier results
        raw_dir = args.out / "raw" / (config.name + tag.replace("_", "/"))
        mine = [(g, p, raw_dir / f"{g}_{p.key}.jsonl") for g in args.groups for p in points[g]]
        done = [m for m in mine if args.resume and m[2].is_file() and m[2].read_text().strip()]
        pending = [m for m in mine if m not in done]
        last_chosen: dict = {}  # the budget counts of the previous point on this server (they are cumulative)

        def finish(group, point, out_file, raw) -> None:
            try:
                if isinstance(raw, RunError):
                    raise raw
                record = make_record(raw, group, config.as_dict(), point,
                                     prompt_order(files[group][0], args.seed, point.num_prompts))
                record["repeat"] = repeat
                check_prompt_lens(record, files[group][1])
                state = record.get("budget_state")
                if state:
                    record["budget_chosen"] = {n: c - last_chosen.get(n, 0) for n, c in state["chosen"].items()
                                               if c - last_chosen.get(n, 0)}
                    last_chosen.clear()
                    last_chosen.update(state["chosen"])
                results["records"].append(record)
            except RunError as e:
                results["failures"].append({"config": config.name + tag, "group": group, "point": point.key,
                                            "error": str(e)})
                tqdm.write(f"FAILED {config.name}{tag} {group} {point.key}: {str(e).splitlines()[0]}", file=sys.stderr)
            bar.update(1)
            save()

        for group, point, out_file in done:
            finish(group, point, out_file, json.loads(out_file.read_text().splitlines()[-1]))
        if not pending:
            continue
        server = None
        try:
            if config.url is None:
                spec = server_spec(config, model, args.head, args.device, args.dtype, args.max_total_tokens,
                                   args.max_running_requests, server_flags(args))
                bar.set_postfix_str(f"starting {config.name}{tag}")
                server = Server(spec, args.out / "logs" / f"server_{config.name}{tag}.log",
                                timeout=args.start_timeout)
                server.start()
            url = config.url or server.url
            jobs = [{"argv": bench_argv(url, p, str(files[g][0]), args.output_len, args.seed,
                                        args.warmup_requests if i == 0 else 0, str(f),
                                        model if config.url is None else None), "out_file": str(f)}
                    for i, (g, p, f) in enumerate(pending)]
            bar.set_postfix_str(f"{config.name}{tag}")
            run_points(jobs, args.out / "logs" / (config.name + tag), args.run_timeout,
                       on_done=lambda i, raw: finish(*pending[i], raw))
        except (RuntimeError, TimeoutError) as e:  # the server did not start (RunErrors are handled per point)
            results["failures"].append({"config": config.name + tag, "error": f"server: {e}"})
            tqdm.write(f"FAILED {config.name}{tag}: {str(e).splitlines()[0]}", file=sys.stderr)
            bar.update(len(pending))
            save()
        finally:
            if server is not None:
                server.stop()
    bar.close()


def main(argv=None) -> int:
    args = parse(argv)
    configs = attached_configs(list(args.attach)) if args.attach else \
        sweep_configs(args.budgets, args.depth, args.width, args.chain, args.ladders, auto=args.auto,
                      draft_vocabs=args.draft_vocabs, plain_packed=args.plain_packed)
    if args.dry_run:
        for c in configs:
            print(json.dumps(c.as_dict()))
        if args.repeats > 1:
            print(f"each config started {args.repeats} times, in turn: " + ", ".join(c.name for c in configs)
                  + ", ...")
        for group in args.groups:  # upper bound: a dataset may hold fewer eval prompts than --prompts-per-dataset
            points = sweep_points(args.concurrency, args.request_rates,
                                  args.prompts_per_dataset * len(group.split("+")), args.waves, args.min_prompts,
                                  args.rate_num_prompts, args.rate_max_concurrency)
            print(f"{group}: " + ", ".join(f"{p.key} ({p.num_prompts} prompts)" for p in points))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    model = resolve_model(args, configs)
    files = write_prompt_files(args, model)
    meta = {"model": model, "head": args.head, "device": args.device, "output_len": args.output_len,
            "seed": args.seed, "argv": sys.argv if argv is None else ["bench_serving.py", *argv],
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(args).items()},
            "configs": [c.as_dict() for c in configs], "host": platform.node()}
    results = {"meta": meta, "records": [], "failures": []}

    def save() -> None:
        meta["wall_s"] = round(time.time() - started, 1)
        tmp = args.out / ".results.json.tmp"
        tmp.write_text(json.dumps(results, indent=1, default=str))
        tmp.replace(args.out / "results.json")

    run_sweep(args, configs, files, model, results, save)
    records = results["records"]  # one per server instance and point
    add_ratios(records)
    results["parity"], results["plain_consistency"] = parity(records), plain_consistency(records)
    combined = combine_repeats(records) if args.repeats > 1 else records
    if args.repeats > 1:
        add_ratios(combined)
        results["combined"] = combined
    save()
    report = markdown(combined, results["parity"], results["plain_consistency"], results["failures"], meta)
    (args.out / "results.md").write_text(report + "\n")
    plots = plot(combined, args.out) if combined else []
    print(report)
    print(f"wrote {args.out / 'results.json'}, {args.out / 'results.md'}, {', '.join(map(str, plots))}")
    return exit_code(results, args.allow_mismatch, exact=args.dtype not in INEXACT_DTYPES)


def exit_code(results: dict, allow_mismatch: bool, exact: bool = True) -> int:
    """3: a run or request failed; 1: greedy outputs differ from plain (unless allow_mismatch, or the dtype is not
    token-exact: bf16/fp16 outputs change with the batch shape, plain's included); else 0."""
    bad = parity_failures(results["parity"])
    if bad:
        why = " (--allow-mismatch: exit 0)" if allow_mismatch else ""
        why = why or ("" if exact else " (not token-exact in this dtype: reported, exit 0; --dtype float32 checks "
                                       "losslessness)")
        print(f"GREEDY MISMATCH: {sum(e['mismatches'] for e in bad)} prompts differ from plain decoding in "
              f"{len(bad)} runs" + why, file=sys.stderr)
        allow_mismatch = allow_mismatch or not exact
    if results["failures"] or any(r["failed"] for r in results["records"]):
        print(f"{len(results['failures'])} runs failed; see results.md 'Warnings' and logs/", file=sys.stderr)
        return 3
    return 1 if bad and not allow_mismatch else 0


if __name__ == "__main__":
    sys.exit(main())
