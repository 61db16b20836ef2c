"""`python -m jetspec_sglang.generate`: one prompt through the HF reference engine; prints the text and the metrics.

    python -m jetspec_sglang.generate --target smollm2 --prompt "What is 12 * 7?" [--draft DIR] [--mode tree]
        [--budget 64 --width 7 --depth 15 --tree-algo best_first] [--temperature 0 --top-p 1 --top-k 0]
        [--max-new-tokens 128 --seed 0 --stop STR] [--chat/--no-chat] [--json] [--threads 1]

--target: a model folder or smollm2 / tiny-qwen3 / tiny-llama (prepared offline by jetspec_sglang.models).
--draft: a head folder; default: the head shipped in jetspec_sglang/heads/<target folder name>/ when there is one.
--json prints one JSON object (config, text, token ids, metrics) on stdout; logs go to stderr. No sglang import.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass

import torch

from jetspec_sglang.config import TREE_ALGOS, ConfigError, JetSpecConfig
from jetspec_sglang.reference.engine import MODES, ReferenceEngine
from jetspec_sglang.reference.loading import (HEADS_DIR, encode_prompt, load_head_for, load_target, resolve_target,
                                              shipped_head_dir)
from jetspec_sglang.reference.sampling import SamplingParams

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class GenerateArgs:
    target: str  # model folder or prepared name
    prompt: str
    draft: str | None  # head folder; None = shipped head (required for tree/chain when none is shipped)
    mode: str  # tree | chain | ar
    budget: int
    width: int
    depth: int | None  # None = the head's block_size - 1
    tree_algo: str
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    seed: int
    stop: tuple[str, ...]
    chat: bool | None  # None = apply the chat template when the tokenizer has one
    json: bool
    dtype: str
    device: str
    attn: str  # sdpa | eager
    threads: int | None  # torch CPU threads; None = torch's default


def parse_args(argv: list[str] | None = None) -> GenerateArgs:
    parser = argparse.ArgumentParser(prog="python -m jetspec_sglang.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, help="model folder, or smollm2 / tiny-qwen3 / tiny-llama")
    parser.add_argument("--prompt", required=True, help="user message (chat template applied unless --no-chat)")
    parser.add_argument("--draft", default=None, help="draft head folder (default: the head shipped for --target)")
    parser.add_argument("--mode", choices=MODES, default="tree", help="tree (JetSpec), chain (width 1), ar (plain)")
    parser.add_argument("--budget", type=int, default=JetSpecConfig.budget, help="N: tree nodes incl. the root")
    parser.add_argument("--width", type=int, default=JetSpecConfig.width, help="K: per-depth top-k")
    parser.add_argument("--depth", type=int, default=None, help="L: draft depth (default: the head's block - 1)")
    parser.add_argument("--tree-algo", choices=TREE_ALGOS, default=JetSpecConfig.tree_algo)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                        help="apply the target's chat template (default: when the tokenizer has one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text + summary")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa", help="target attention implementation")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 is fastest for tiny models on a busy machine)")
    ns = parser.parse_args(argv)
    return GenerateArgs(**{**vars(ns), "stop": tuple(ns.stop)})


def run(args: GenerateArgs) -> dict:
    """Load, generate, and return the report dict (what --json prints)."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    target_path = resolve_target(args.target)
    target, tokenizer = load_target(target_path, DTYPES[args.dtype], args.device, args.attn)
    head, draft = None, None
    if args.mode != "ar":
        draft = args.draft or shipped_head_dir(args.target)
        if draft is None:
            raise SystemExit(f"error: no draft head is shipped for --target {args.target} (looked in "
                             f"{HEADS_DIR}/<target folder name>/); pass --draft DIR, or use --mode ar")
        head = load_head_for(target, draft)
    depth = args.depth if args.depth is not None else (head.config.depth if head is not None else 1)
    config = JetSpecConfig(budget=args.budget, width=args.width, depth=depth, tree_algo=args.tree_algo)
    engine = ReferenceEngine(target, head, config, args.mode, tokenizer)
    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, stop=args.stop, seed=args.seed)
    prompt_ids = encode_prompt(tokenizer, args.prompt, args.chat)
    result = engine.generate(prompt_ids, params)
    return {
        "target": str(target_path), "draft": None if draft is None else str(draft), "mode": args.mode,
        "config": None if args.mode == "ar" else dataclasses.asdict(engine.config),
        "sampling": dataclasses.asdict(params), "prompt": args.prompt, "text": result.text,
        "token_ids": result.token_ids, "finish_reason": result.finish_reason, "metrics": result.metrics,
    }


def format_summary(report: dict) -> str:
    m = report["metrics"]
    lines = [report["text"], "", f"--- {report['mode']} | {m['new_tokens']} tokens ({m['finish_reason']}) in "
             f"{m['total_s']:.3f} s = {m['tokens_per_s']:.1f} tok/s | prompt {m['prompt_tokens']} tokens"]
    if report["config"] is not None:
        c = report["config"]
        tau = "n/a" if m["tau"] is None else f"{m['tau']:.3f}"
        lines.append(f"budget {c['budget']} width {c['width']} depth {c['depth']} {c['tree_algo']} | rounds "
                     f"{m['rounds']} | tau {tau}")
        lines.append("per-depth acceptance: " + " ".join(f"{a:.2f}" for a in m["per_depth_acceptance"]))
    share = m["phase_share"]
    lines.append(f"prefill {m['prefill_s']:.3f} s | round time {m['round_s']:.3f} s: " + ", ".join(
        f"{p} {m[p + '_s']:.3f} s ({100 * share[p]:.0f}%)" for p in share))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # keep stdout/stderr clean for --json consumers
    try:
        report = run(args)
    except (ConfigError, ValueError, FileNotFoundError) as exc:  # bad flags: say which, no traceback
        raise SystemExit(f"error: {exc}") from exc
    print(json.dumps(report) if args.json else format_summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
