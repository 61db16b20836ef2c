"""Mean accept length (tau) of JetSpec heads on held-out prompts: causal vs bidirectional, tree vs chain.

    python bench/bench_accept.py --causal jetspec_sglang/heads/smollm2-135m-instruct --bidirectional DIR \
        [--prompts 30] [--max-new-tokens 256] [--budgets 8 16 32 64 128 256] [--width 7] [--depth 15] [--out DIR] \
        [--tree-algos best_first accum_logp]

Target: SmolLM2-135M-Instruct (fp32, HF transformers, CPU). Prompts: the evaluation splits of GSM8K, HumanEval and
MT-Bench (never seen in training), chat template, greedy, up to --max-new-tokens. Method (jetspec_sglang/reference/
replay.py): greedy speculative decoding emits the plain greedy continuation for every configuration, so each
prompt's continuation is generated once, the target runs once over it, each head drafts every anchor in one
forward, and every configuration's rounds are replayed exactly. --validate K reruns the real ReferenceEngine on K
prompts per dataset and checks that its per-round accept lengths equal the replay's.
Writes results.jsonl, results.md and tau_vs_budget.png under --out.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from jetspec_sglang.config import TREE_ALGOS, JetSpecConfig
from jetspec_sglang.data import encode_chat, load_prompts
from jetspec_sglang.reference import ReferenceEngine, SamplingParams
from jetspec_sglang.reference.loading import load_head_for, load_target, resolve_target
from jetspec_sglang.reference.replay import Trajectory, draft_all_anchors, replay
from jetspec_sglang.taps import forward_with_taps

DATASETS = ("gsm8k", "humaneval", "mtbench")


@dataclass(frozen=True)
class Args:
    target: str
    heads: dict
    prompts: int
    max_new_tokens: int
    budgets: tuple
    width: int
    depth: int
    out: Path
    validate: int
    batch: int
    tree_algos: tuple = ("best_first", "accum_logp")
    draft_vocabs: tuple = ("full",)


def parse(argv=None) -> Args:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="smollm2")
    p.add_argument("--causal", default=None, help="causal head folder (the shipped head)")
    p.add_argument("--bidirectional", default=None, help="bidirectional head folder (same data, steps, seed)")
    p.add_argument("--prompts", type=int, default=30, help="per dataset")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--budgets", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    p.add_argument("--width", type=int, default=7)
    p.add_argument("--depth", type=int, default=15)
    p.add_argument("--out", default="runs/bench_accept")
    p.add_argument("--validate", type=int, default=0, help="prompts per dataset rerun with the real engine")
    p.add_argument("--batch", type=int, default=8, help="generation batch for the greedy continuations")
    p.add_argument("--tree-algos", nargs="+", default=["best_first", "accum_logp"], choices=TREE_ALGOS,
                   help="tree builders to replay; the table's mode column names them (results before this flag "
                        "existed say 'tree' for accum_logp)")
    p.add_argument("--draft-vocabs", nargs="+", default=["full"], metavar="SIZE",
                   help="draft vocabularies to replay per head: 'full' and/or sizes S (the S most frequent tokens of "
                        "the head's draft_vocab.json, jetspec_sglang/draft_vocab.py); a size adds a head NAME@vS")
    p.add_argument("--head", action="append", default=[], metavar="NAME=DIR",
                   help="more heads to compare under their own names (repeatable), e.g. --head gpu=bench/heads/X")
    a = p.parse_args(argv)
    heads = ({"causal": a.causal} if a.causal else {}) | (
        {"bidirectional": a.bidirectional} if a.bidirectional else {})
    for item in a.head:
        name, sep, path = item.partition("=")
        if not sep or not name or not path or name in heads:
            p.error(f"--head {item!r}: write NAME=DIR with a name not used twice")
        heads[name] = path
    if not heads:
        p.error("no head to score: pass --causal DIR and/or --head NAME=DIR")
    for size in a.draft_vocabs:
        if size != "full" and not (size.isdigit() and int(size) >= a.width):
            p.error(f"--draft-vocabs {size!r}: give 'full' or a size >= --width {a.width}")
    return Args(a.target, heads, a.prompts, a.max_new_tokens, tuple(a.budgets), a.width, a.depth, Path(a.out),
                a.validate, a.batch, tuple(dict.fromkeys(a.tree_algos)), tuple(dict.fromkeys(a.draft_vocabs)))


@torch.inference_mode()
def continuations(model, tok, prompts: list[list[int]], max_new: int, batch: int, cache: Path) -> list[list[int]]:
    """Greedy continuations (EOS kept, nothing after), cached in `cache` (JSON lines, resumable)."""
    done = [json.loads(line) for line in cache.read_text().splitlines()] if cache.exists() else []
    eos = {tok.eos_token_id} | set(model.generation_config.eos_token_id if isinstance(
        model.generation_config.eos_token_id, list) else [model.generation_config.eos_token_id])
    with cache.open("a") as f:
        for start in tqdm(range(len(done), len(prompts), batch), desc="continuations", unit="batch"):
            chunk = prompts[start: start + batch]
            width = max(map(len, chunk))
            ids = torch.tensor([[tok.pad_token_id] * (width - len(x)) + x for x in chunk])
            attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in chunk])
            out = model.generate(input_ids=ids, attention_mask=attention, max_new_tokens=max_new, do_sample=False,
                                 pad_token_id=tok.pad_token_id)[:, width:]
            for row in out.tolist():
                cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
                f.write(json.dumps(row[:cut]) + "\n")
                done.append(row[:cut])
    return done[: len(prompts)]


def configs(args: Args, heads: list[str]) -> list[tuple[str, str, int, int]]:
    """(head, mode, budget, width): trees of every builder at every budget and a width-1 chain of depth L per
    head."""
    out = []
    for head in heads:
        out += [(head, algo, b, args.width) for algo in args.tree_algos for b in args.budgets]
        out.append((head, "chain", args.depth + 1, 1))
    return out


def run(args: Args) -> list[dict]:
    args.out.mkdir(parents=True, exist_ok=True)
    model, tok = load_target(resolve_target(args.target))
    heads = {name: load_head_for(model, path) for name, path in args.heads.items()}
    drafters = draft_variants(args, heads, model.config.vocab_size)  # name -> (head, vocabulary ids or None)
    records = {ds: load_prompts(ds, "eval")[: args.prompts] for ds in DATASETS}
    rows, validations = [], []
    for ds, recs in records.items():
        prompt_ids = encode_chat(tok, recs)
        conts = continuations(model, tok, prompt_ids, args.max_new_tokens, args.batch,
                              args.out / f"continuations_{ds}.jsonl")
        lengths = {cfg: [] for cfg in configs(args, list(drafters))}
        for prompt, cont in tqdm(list(zip(prompt_ids, conts)), desc=f"replay {ds}", unit="prompt"):
            seq = torch.tensor(prompt + cont)
            layer_ids = next(iter(heads.values())).config.target_layer_ids
            out, taps = forward_with_taps(model, layer_ids, seq[None])
            traj = Trajectory(seq, len(prompt), out.logits[0].argmax(-1))
            anchors = torch.arange(len(prompt), len(seq))
            for name, (head, vocab_ids_S) in drafters.items():
                tokens, logprobs = draft_all_anchors(head, taps[0], seq, anchors, args.width, vocab_ids_S=vocab_ids_S)
                for cfg in (c for c in lengths if c[0] == name):
                    lengths[cfg].append(replay(traj, tokens, logprobs, cfg[2], cfg[3], args.depth,
                                               args.max_new_tokens,
                                               tree_algo="accum_logp" if cfg[1] == "chain" else cfg[1]))
        for (name, mode, budget, width), per_request in lengths.items():
            flat = [x for r in per_request for x in r]
            rows.append({"dataset": ds, "head": name, "mode": mode, "budget": budget, "width": width,
                         "depth": args.depth, "prompts": len(per_request), "rounds": len(flat),
                         "tau": sum(flat) / max(len(flat), 1),
                         "tau_per_request_mean": sum(sum(r) / len(r) for r in per_request if r) / len(per_request)})
        if args.validate:
            validations.append(validate(model, tok, next(iter(heads.values())), prompt_ids[: args.validate], conts, args,
                                        lengths[(next(iter(heads)), args.tree_algos[0],
                                                 args.budgets[len(args.budgets) // 2], args.width)]))
    with (args.out / "results.jsonl").open("w") as f:
        for row in rows + validations:
            f.write(json.dumps(row) + "\n")
    return rows + validations


def draft_variants(args: Args, heads: dict, vocab_size: int) -> dict:
    """{name: (head, vocab_ids_S or None)}: each head with the full vocabulary under its own name and with each
    --draft-vocabs size S under NAME@vS (the S most frequent tokens of its folder's draft_vocab.json)."""
    from jetspec_sglang.draft_vocab import resolve_draft_vocab

    out = {}
    for name, head in heads.items():
        for size in args.draft_vocabs:
            ids_S, _ = resolve_draft_vocab(args.heads[name], size, vocab_size)
            out[name if size == "full" else f"{name}@v{size}"] = (head, ids_S)
    return out


def validate(model, tok, head, prompts, conts, args: Args, replayed) -> dict:
    """Rerun the real engine at one budget; its accept lengths must equal the replay's."""
    budget = args.budgets[len(args.budgets) // 2]
    engine = ReferenceEngine(model, head, JetSpecConfig(budget=budget, depth=args.depth, width=args.width,
                                                        tree_algo=args.tree_algos[0]), mode="tree", tokenizer=tok)
    same = 0
    for prompt, replay_lengths in zip(prompts, replayed):
        result = engine.generate(prompt, SamplingParams(max_new_tokens=args.max_new_tokens))
        same += result.metrics["accept_lens"] == replay_lengths
    return {"validation": f"{same}/{len(prompts)} prompts: engine accept lengths == replay", "budget": budget}


def report(rows: list[dict], out: Path) -> str:
    table = [r for r in rows if "tau" in r]
    heads_modes = sorted({(r["head"], r["mode"]) for r in table})
    budgets = sorted({r["budget"] for r in table if r["mode"] != "chain"})
    lines = ["| dataset | head | mode | " + " | ".join(f"N={b}" for b in budgets) + " | chain (N=L+1) |",
             "|---|---|---|" + "---|" * (len(budgets) + 1)]
    for ds in DATASETS:
        for head, mode in heads_modes:
            if mode == "chain":
                continue
            cells = {r["budget"]: r["tau"] for r in table if (r["dataset"], r["head"], r["mode"]) == (ds, head, mode)}
            chain = next((r["tau"] for r in table if (r["dataset"], r["head"], r["mode"]) == (ds, head, "chain")), None)
            lines.append(f"| {ds} | {head} | {mode} | "
                         + " | ".join(f"{cells.get(b, float('nan')):.2f}" for b in budgets) + f" | {chain:.2f} |")
    lines += [f"\n{r['validation']} (budget {r['budget']})" for r in rows if "validation" in r]
    text = "\n".join(lines)
    (out / "results.md").write_text(text + "\n")
    plot(table, budgets, out / "tau_vs_budget.png")
    return text


def plot(table, budgets, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(DATASETS), figsize=(5 * len(DATASETS), 4), sharey=True)
    for ax, ds in zip(axes, DATASETS):
        for head in sorted({r["head"] for r in table}):
            for mode in sorted({r["mode"] for r in table if r["head"] == head and r["mode"] != "chain"}):
                tree = sorted((r["budget"], r["tau"]) for r in table if (r["dataset"], r["head"], r["mode"]) ==
                              (ds, head, mode))
                ax.plot([b for b, _ in tree], [t for _, t in tree], marker="o", label=f"{head} {mode}")
            chain = [r["tau"] for r in table if (r["dataset"], r["head"], r["mode"]) == (ds, head, "chain")]
            if chain:
                ax.axhline(chain[0], linestyle="--", color=ax.lines[-1].get_color(), label=f"{head} chain")
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_title(ds)
        ax.set_xlabel("tree budget N (nodes incl. root)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean accept length tau")
    axes[-1].legend(fontsize=8)
    fig.suptitle("JetSpec heads on SmolLM2-135M-Instruct (held-out prompts, greedy)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    args = parse(argv)
    rows = run(args)
    print(report(rows, args.out))
    print(f"\nwrote {args.out}/results.jsonl, results.md, tau_vs_budget.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
