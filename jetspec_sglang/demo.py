"""The CPU demo (README, first command): SmolLM2-135M-Instruct + the shipped JetSpec head in real SGLang servers.

Speed in bfloat16 (the CPU default): a plain and a JETSPEC server one after the other on 127.0.0.1, both with
packed bf16 weights (JETSPEC_CPU_PACKED_WEIGHTS, like for like), the same held-out GSM8K and HumanEval prompts
(greedy) to both; prints tokens/s and accept length. bf16 outputs differ from
fp32 ones, and plain bf16 decoding differs from itself across batch shapes (a verify forward over N tree nodes is
another batch shape than a one-token decode step), so bf16 speculation is not token-exact. Losslessness is checked
where it is exact: a plain and a JETSPEC server in float32 on a few of the prompts, outputs compared token for token
(the exit code is 1 if any differs).
    python -m jetspec_sglang.demo [--prompts 6] [--max-new-tokens 128] [--budget 16] [--depth 7]
                                  [--dtype bfloat16] [--parity-prompts 3] [--parity-tokens 64] [--json]
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tqdm import tqdm

from jetspec_sglang.serving import Server, ServerSpec

logger = logging.getLogger(__name__)
HEAD_NAME = "smollm2-135m-instruct"


def shipped_head(name: str = HEAD_NAME) -> Path:
    path = Path(str(resources.files("jetspec_sglang.heads") / name))
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"the shipped head {path} is missing; reinstall jetspec-sglang (scripts/setup.sh)")
    return path


@dataclass(frozen=True)
class DemoArgs:
    prompts: int
    max_new_tokens: int
    budget: int
    depth: int
    width: int
    dtype: str
    parity_prompts: int
    parity_tokens: int
    as_json: bool
    log_dir: str


def parse_args(argv=None) -> DemoArgs:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=6, help="held-out prompts, half GSM8K, half HumanEval")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--budget", type=int, default=16,
                   help="largest tree budget, nodes incl. root (--speculative-num-draft-tokens); the server picks "
                        "each step's budget up to it (JETSPEC_BUDGET=auto, the default)")
    p.add_argument("--depth", type=int, default=7,
                   help="draft depth (--speculative-num-steps); a causal head drafts a shorter block exactly")
    p.add_argument("--width", type=int, default=4, help="per-depth top-k (JETSPEC_TREE_WIDTH)")
    p.add_argument("--dtype", default="bfloat16", help="dtype of the speed comparison (server --dtype)")
    p.add_argument("--parity-prompts", type=int, default=3,
                   help="prompts of the float32 losslessness check (0 skips it)")
    p.add_argument("--parity-tokens", type=int, default=64, help="new tokens per prompt of the float32 check")
    p.add_argument("--json", dest="as_json", action="store_true", help="print one JSON object")
    p.add_argument("--log-dir", default=None, help="where the server logs go (default: a temp dir)")
    a = p.parse_args(argv)
    return DemoArgs(a.prompts, a.max_new_tokens, a.budget, a.depth, a.width, a.dtype, a.parity_prompts,
                    a.parity_tokens, a.as_json,
                    a.log_dir or tempfile.mkdtemp(prefix="jetspec-demo-"))


def _prompts(model_dir: str, n: int):
    from transformers import AutoTokenizer

    from jetspec_sglang.data import encode_chat, load_prompts

    tok = AutoTokenizer.from_pretrained(model_dir)
    records = load_prompts("gsm8k", "eval")[: n - n // 2] + load_prompts("humaneval", "eval")[: n // 2]
    return records, encode_chat(tok, records)


def _serve(spec: ServerSpec, log: Path, prompts, max_new: int, label: str) -> dict:
    with Server(spec, log) as server:
        server.generate(text="Hello", max_new_tokens=4, temperature=0)  # warm-up, not timed
        outs, start = [], time.perf_counter()
        for ids in tqdm(prompts, desc=label, unit="prompt"):
            outs.append(server.generate(input_ids=ids, max_new_tokens=max_new, temperature=0))
        seconds = time.perf_counter() - start
        budget = server.budget_report() if spec.head else None
    tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    rounds = sum(o["meta_info"].get("spec_verify_ct", 0) for o in outs)
    return {"outputs": outs, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "accept_length": tokens / rounds if rounds else None, "budget_state": budget}


def budget_summary(state: dict | None) -> str:
    """'auto up to 8: N=1 12%, N=8 88% of 310 decode steps' from a `jetspec_budget` report (None: '?').

    Example: {"policy": "fixed", "max_budget": 8, "decode_steps": 5, "chosen": {"8": 5}} -> 'fixed 8: N=8 100% of 5
    decode steps'."""
    if not state:
        return "?"
    steps = max(1, int(state.get("decode_steps", 0)))
    chosen = sorted(((int(n), c) for n, c in state.get("chosen", {}).items()), key=lambda x: x[0])
    shares = ", ".join(f"N={n} {100 * c / steps:.0f}%" for n, c in chosen)
    policy, top = state["policy"], state["max_budget"]
    head = f"auto up to {top}" if policy == "auto" else f"{policy} {top}"
    return f"{head}: {shares} of {steps} decode steps"


def run(args: DemoArgs) -> dict:
    from jetspec_sglang.models import prepare_model

    model = str(prepare_model("smollm2"))
    head = str(shipped_head())
    records, prompts = _prompts(model, args.prompts)
    logs = Path(args.log_dir)

    def both(dtype, ids, max_new, tag):
        # Like for like: the plain server packs its bf16 weights as a JETSPEC server does by default on CPU
        # (JETSPEC_CPU_PACKED_WEIGHTS, bit-identical outputs), so the ratio is speculation's alone; stock plain SGLang
        # is slower here (bench/bench_round.py --plain-packed measures both). fp32 is never packed.
        plain = _serve(ServerSpec(model=model, dtype=dtype, env={"JETSPEC_CPU_PACKED_WEIGHTS": "on"}),
                       logs / f"plain-{dtype}.log", ids, max_new, f"plain   {tag}")
        spec = _serve(ServerSpec(model=model, dtype=dtype, head=head, budget=args.budget, depth=args.depth,
                                 env={"JETSPEC_TREE_WIDTH": str(args.width)}),
                      logs / f"jetspec-{dtype}.log", ids, max_new, f"JETSPEC {tag}")
        same = [a["output_ids"] == b["output_ids"] for a, b in zip(plain["outputs"], spec["outputs"])]
        return plain, spec, f"{sum(same)}/{len(same)}"

    plain, spec, same_speed = both(args.dtype, prompts, args.max_new_tokens, args.dtype)
    parity = None
    if args.dtype == "float32":  # the speed run is exact: it is the parity check, on every prompt
        parity = same_speed
    elif args.parity_prompts > 0:
        parity = both("float32", prompts[: args.parity_prompts], args.parity_tokens, "float32")[2]
    return {
        "model": f"SmolLM2-135M-Instruct ({args.dtype}, CPU)", "head": head, "budget": args.budget, "depth": args.depth,
        "width": args.width, "dtype": args.dtype, "prompts": [r.id for r in records],
        "max_new_tokens": args.max_new_tokens,
        "plain_tokens_per_s": round(plain["tokens_per_s"], 2), "jetspec_tokens_per_s": round(spec["tokens_per_s"], 2),
        "speedup": round(spec["tokens_per_s"] / plain["tokens_per_s"], 3),
        "accept_length": round(spec["accept_length"], 3), "budgets_chosen": budget_summary(spec["budget_state"]),
        "budget_state": spec["budget_state"], "same_outputs_in_speed_dtype": same_speed,
        "parity_prompts": len(prompts) if args.dtype == "float32" else args.parity_prompts,
        "parity_tokens": args.max_new_tokens if args.dtype == "float32" else args.parity_tokens,
        "identical_outputs_fp32": parity,
        "sample": spec["outputs"][0]["text"][:400], "logs": str(logs),
    }


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    result = run(args)
    if args.as_json:
        print(json.dumps(result, indent=2))
    else:
        print(f"\n{result['model']} + JetSpec head, budget up to {result['budget']}, depth {result['depth']}, "
              f"width {result['width']}; {len(result['prompts'])} held-out prompts, greedy, "
              f"{result['max_new_tokens']} new tokens max")
        print(f"  plain decoding : {result['plain_tokens_per_s']:7.2f} tok/s  (with the packed bf16 weights JETSPEC "
              "uses on CPU: JETSPEC_CPU_PACKED_WEIGHTS; stock plain SGLang is slower)")
        print(f"  JETSPEC        : {result['jetspec_tokens_per_s']:7.2f} tok/s  (x{result['speedup']:.2f})")
        print(f"  accept length  : {result['accept_length']:.2f} tokens per verify round")
        print(f"  tree budget    : {result['budgets_chosen']} (JETSPEC_BUDGET=auto is the default; "
              "JETSPEC_BUDGET=N fixes it)")
        if result["dtype"] != "float32":
            print(f"  {result['dtype']} outputs equal to plain {result['dtype']}: "
                  f"{result['same_outputs_in_speed_dtype']} (not expected to be all: {result['dtype']} outputs "
                  f"differ from fp32 ones, and plain {result['dtype']} differs from itself across batch shapes; "
                  "losslessness is exact in fp32, checked next)")
        if result["identical_outputs_fp32"] is not None:
            print(f"  lossless (fp32): {result['identical_outputs_fp32']} outputs equal plain decoding token for "
                  f"token ({result['parity_prompts']} prompts, {result['parity_tokens']} new tokens, float32)")
        print(f"  sample output  : {result['sample']!r}")
        print(f"  server logs    : {result['logs']}")
    parity = result["identical_outputs_fp32"]
    return 0 if parity is None or parity.split("/")[0] == parity.split("/")[1] else 1


if __name__ == "__main__":
    raise SystemExit(main())
