"""CLI: python -m jetspec_sglang.train {regenerate, cache, fit, eval} ... (argparse -> frozen dataclass -> one call).

  regenerate  target-aligned responses for train-split prompts (train/regenerate.py)
  cache       target taps + top-k teacher log-probs of the regenerated sequences (train/cache.py)
  fit         distil a draft head from the cache (train/loop.py); --resume continues a run
  eval        per-depth greedy agreement of a saved head on the held-out cache slice (train/evaluate.py)
  prompts     the tokenised train-split requests of a plan, for `generate` on a machine without the data packages
  generate    GPU regeneration in large HF `generate` batches, sharded over processes (train/generate_batched.py)
  online      distil against the live target on CPU, one GPU or torchrun (train/online.py); no cache
  natural     the datasets' own answers to train-split prompts as training sequences (train/natural.py)
  draft-vocab rank the target's tokens by how often its responses use them -> HEAD/draft_vocab.json (draft_vocab.py)
Large outputs go under ${JETSPEC_CACHE:-~/.cache/jetspec_sglang}/train/. Imports no sglang.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import sys

from jetspec_sglang.models import cache_root


def _default(sub: str) -> str:
    return str(cache_root() / "train" / sub)


def _add_regenerate(sub) -> None:
    p = sub.add_parser("regenerate", help="regenerate assistant responses with the target")
    p.add_argument("--model", default="smollm2", help="prepared model name or HF folder (default smollm2)")
    p.add_argument("--out", default=_default("data/smollm2"), help="run dir for responses.jsonl")
    p.add_argument("--plan", default="gsm8k:1000:0,humaneval:100:0,humaneval:100:0.7,sharegpt:2500:0",
                   help="DATASET:COUNT:TEMPERATURE,... (0 = greedy)")
    p.add_argument("--max-new-tokens", type=int, default=320)
    p.add_argument("--max-prompt-len", type=int, default=384)
    p.add_argument("--num-slots", type=int, default=48)
    p.add_argument("--max-total-tokens", type=int, default=0, help="response-token budget (0 = whole plan)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)


def _model_path(name: str) -> str:
    from jetspec_sglang.models import MODEL_DIRNAMES, prepare_model

    return str(prepare_model(name)) if name in MODEL_DIRNAMES else name


def _run_regenerate(a) -> None:
    from jetspec_sglang.train.regenerate import RegenerateConfig, parse_plan, regenerate

    regenerate(RegenerateConfig(model=_model_path(a.model), out_dir=a.out, plan=parse_plan(a.plan),
                                max_new_tokens=a.max_new_tokens, max_prompt_len=a.max_prompt_len,
                                num_slots=a.num_slots, max_total_tokens=a.max_total_tokens, seed=a.seed,
                                threads=a.threads))


def _add_cache(sub) -> None:
    p = sub.add_parser("cache", help="run the target once: taps + top-k teacher of every regenerated sequence")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--responses", default=_default("data/smollm2/responses.jsonl"))
    p.add_argument("--out", default=_default("cache/smollm2"))
    p.add_argument("--layer-ids", default="1,10,18,27", help="tapped target layers, comma-separated")
    p.add_argument("--top-k", type=int, default=32)
    p.add_argument("--held-out-percent", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)


def _run_cache(a) -> None:
    from jetspec_sglang.train.cache import CacheConfig, build_cache

    build_cache(CacheConfig(model=_model_path(a.model), responses=a.responses, out_dir=a.out,
                            layer_ids=_ints(a.layer_ids), top_k=a.top_k, held_out_percent=a.held_out_percent,
                            threads=a.threads))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _add_fit(sub) -> None:
    from jetspec_sglang.train.loop import FitConfig

    d = FitConfig(cache_dir="", out_dir="", model="")
    p = sub.add_parser("fit", help="distil a draft head from the cache")
    p.add_argument("--cache", default=_default("cache/smollm2"), help="cache directory, or several comma-separated")
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics, curve, head/)")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--head-type", choices=("causal", "bidirectional"), default=d.head_type)
    p.add_argument("--target-layer-ids", default="", help="subset of the cached taps (default: all)")
    p.add_argument("--export", default=None, help="also write the final head here (official layout, bf16)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    for field in dataclasses.fields(FitConfig):
        if field.name in ("cache_dir", "out_dir", "model", "head_type", "target_layer_ids"):
            continue
        kind = float if field.name == "depth_decay" else type(field.default)
        choices = ("target-layers", "random") if field.name == "init" else None
        p.add_argument("--" + field.name.replace("_", "-"), type=kind, default=field.default, choices=choices)


def _run_fit(a) -> None:
    from jetspec_sglang.train.loop import FitConfig, export_head, fit

    names = {f.name for f in dataclasses.fields(FitConfig)} - {"cache_dir", "out_dir", "model", "target_layer_ids"}
    cfg = FitConfig(cache_dir=a.cache, out_dir=a.out, model=_model_path(a.model),
                    target_layer_ids=_ints(a.target_layer_ids), **{n: getattr(a, n) for n in names})
    out = fit(cfg, resume=a.resume)
    if a.export and (out / "head").exists():
        from jetspec_sglang.draft_head import load_draft_head

        export_head(load_draft_head(out / "head"), a.export)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="per-depth greedy agreement of a saved head on the held-out cache slice")
    p.add_argument("--head", required=True, help="head directory (config.json + model.safetensors)")
    p.add_argument("--cache", default=_default("cache/smollm2"), help="cache directory, or several comma-separated")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--anchor-stride", type=int, default=2)
    p.add_argument("--max-sequences", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the result JSON here")


def _run_eval(a) -> None:
    from jetspec_sglang.train.evaluate import EvalConfig, evaluate

    result = evaluate(EvalConfig(head=a.head, cache_dir=a.cache, model=_model_path(a.model),
                                 anchor_stride=a.anchor_stride, max_sequences=a.max_sequences, threads=a.threads,
                                 out=a.out))
    print(json.dumps(result))  # the CLI's result, for shell pipelines


def _add_prompts(sub) -> None:
    p = sub.add_parser("prompts", help="write the tokenised train-split requests of a plan (JSONL)")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--plan", required=True, help="DATASET:COUNT:TEMPERATURE,... (0 = greedy)")
    p.add_argument("--max-prompt-len", type=int, default=384)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSONL to write")


def _run_prompts(a) -> None:
    from transformers import AutoTokenizer

    from jetspec_sglang.train.regenerate import RegenerateConfig, build_requests, parse_plan

    cfg = RegenerateConfig(model=_model_path(a.model), out_dir="", plan=parse_plan(a.plan),
                           max_prompt_len=a.max_prompt_len, seed=a.seed)
    requests = build_requests(AutoTokenizer.from_pretrained(cfg.model), cfg)
    with open(a.out, "w") as f:
        for r in requests:
            f.write(json.dumps({**r, "split": "train"}) + "\n")
    logging.getLogger(__name__).info("prompts: %d requests -> %s", len(requests), a.out)


def _add_generate(sub) -> None:
    from jetspec_sglang.train.generate_batched import BatchedGenerateConfig

    p = sub.add_parser("generate", help="regenerate responses in large HF generate batches (GPU)")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--prompts", required=True, help="JSONL from `prompts`")
    p.add_argument("--out", required=True, help="run dir for responses.rank*.jsonl")
    for field in dataclasses.fields(BatchedGenerateConfig):
        if field.name not in ("model", "prompts_file", "out_dir"):
            p.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)


def _run_generate(a) -> None:
    from jetspec_sglang.train.generate_batched import BatchedGenerateConfig, generate_batched

    names = {f.name for f in dataclasses.fields(BatchedGenerateConfig)} - {"model", "prompts_file", "out_dir"}
    generate_batched(BatchedGenerateConfig(model=_model_path(a.model), prompts_file=a.prompts, out_dir=a.out,
                                           **{n: getattr(a, n) for n in names}))


def _add_online(sub) -> None:
    from jetspec_sglang.train.online import OnlineConfig

    d = OnlineConfig(data=("x",), out_dir="", model="")
    p = sub.add_parser("online", help="distil a head against the live target (CPU, GPU, torchrun)")
    p.add_argument("--data", required=True, help="responses JSONL files, comma-separated (globs allowed)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--export", default=None, help="also copy the final head folder here")
    p.add_argument("--target-layer-ids", default=",".join(map(str, d.target_layer_ids)))
    for field in dataclasses.fields(OnlineConfig):
        if field.name in ("data", "out_dir", "model", "target_layer_ids"):
            continue
        kind = float if field.name == "depth_decay" else type(field.default)
        choices = {"init": ("target-layers", "random"), "head_type": ("causal", "bidirectional"),
                   "device": ("cpu", "cuda")}.get(field.name)
        p.add_argument("--" + field.name.replace("_", "-"), type=kind, default=field.default, choices=choices)


def _run_online(a) -> None:
    import glob
    import shutil

    from jetspec_sglang.train.online import OnlineConfig, train_online

    files = tuple(sorted(f for part in a.data.split(",") if part for f in (glob.glob(part) or [part])))
    names = {f.name for f in dataclasses.fields(OnlineConfig)} - {"data", "out_dir", "model", "target_layer_ids"}
    out = train_online(OnlineConfig(data=files, out_dir=a.out, model=_model_path(a.model),
                                    target_layer_ids=_ints(a.target_layer_ids),
                                    **{n: getattr(a, n) for n in names}), resume=a.resume)
    if a.export and int(os.environ.get("RANK", 0)) == 0:
        shutil.copytree(out / "head", a.export, dirs_exist_ok=True)


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="held-out agreement and per-anchor tree accept length of a saved head")
    p.add_argument("--head", required=True, help="head directory (config.json + model.safetensors)")
    p.add_argument("--data", required=True, help="responses JSONL files, comma-separated")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--held-out-percent", type=int, default=3)
    p.add_argument("--sequences", type=int, default=48)
    p.add_argument("--max-seq-len", type=int, default=1024)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--width", type=int, default=7)
    p.add_argument("--out", default=None, help="write the result JSON here")


def _run_score(a) -> None:
    import torch

    from jetspec_sglang.draft_head import load_draft_head
    from jetspec_sglang.train.heldout import evaluate_heldout
    from jetspec_sglang.train.online import OnlineConfig, load_target, split_records
    from jetspec_sglang.train.signals import pad_sequences

    cfg = OnlineConfig(data=tuple(x for x in a.data.split(",") if x), out_dir="", model=_model_path(a.model),
                       held_out_percent=a.held_out_percent, eval_sequences=a.sequences, max_seq_len=a.max_seq_len)
    _, held = split_records(cfg)
    target = load_target(cfg.model, torch.device("cpu"))
    head = load_draft_head(a.head, target_config=target.config, dtype=torch.float32)
    head.attach_target(target.get_input_embeddings(), target.get_output_embeddings())
    result = {"head": a.head, "sequences": len(held), **evaluate_heldout(
        head, target, list(head.config.target_layer_ids), pad_sequences(held, cfg.max_seq_len), a.stride,
        width=a.width)}
    if a.out:
        pathlib.Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))  # the CLI's result, for shell pipelines


def _add_natural(sub) -> None:
    p = sub.add_parser("natural", help="the datasets' own answers to train-split prompts as training sequences")
    p.add_argument("--model", default="smollm2", help="prepared model name or HF folder (its tokenizer)")
    p.add_argument("--plan", default="sharegpt:0,gsm8k:0,humaneval:0",
                   help="DATASET:COUNT,... (0 = every train record with an answer)")
    p.add_argument("--out", default=_default("data/smollm2-natural/responses.jsonl"))
    p.add_argument("--max-prompt-len", type=int, default=384)
    p.add_argument("--max-response-len", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)


def _run_natural(a) -> None:
    from jetspec_sglang.train.natural import NaturalConfig, parse_natural_plan, write_natural

    summary = write_natural(NaturalConfig(model=_model_path(a.model), out=a.out, plan=parse_natural_plan(a.plan),
                                          max_prompt_len=a.max_prompt_len, max_response_len=a.max_response_len,
                                          seed=a.seed))
    print(json.dumps({"out": a.out, "datasets": summary}))  # the CLI's result, for shell pipelines


def _add_curves(sub) -> None:
    p = sub.add_parser("curves", help="several runs' held-out curves side by side (table + PNG)")
    p.add_argument("--run", action="append", required=True, metavar="NAME=METRICS",
                   help="a run's metrics.jsonl (or its run/head folder); repeat per run")
    p.add_argument("--png", default=None, help="also draw the curves here")
    p.add_argument("--out", default=None, help="also write the markdown table here")


def _run_curves(a) -> None:
    from jetspec_sglang.train.curves import compare_runs, runs_table
    from jetspec_sglang.train.loop import METRICS_FILE

    runs = {}
    for item in a.run:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--run {item!r}: write NAME=PATH (a metrics.jsonl or the folder holding one)")
        p = pathlib.Path(path)
        runs[name] = p / METRICS_FILE if p.is_dir() else p
    try:
        table = runs_table(compare_runs(runs, a.png))
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if a.out:
        pathlib.Path(a.out).write_text(table)
    print(table, end="")  # the CLI's result


def _add_draft_vocab(sub) -> None:
    p = sub.add_parser("draft-vocab", help="rank the target's tokens by use in its responses -> HEAD/draft_vocab.json")
    p.add_argument("--head", required=True, help="head folder; the file is written there")
    p.add_argument("--data", default=None, help="responses JSONL files (.jsonl or .jsonl.xz), comma-separated; "
                   "default: the head's training_data.jsonl.xz (the target's own regenerations)")
    p.add_argument("--default-size", type=int, default=16384, help="the size JETSPEC_DRAFT_VOCAB=auto drafts from")


def _run_draft_vocab(a) -> None:
    import lzma

    from jetspec_sglang.draft_head_config import DraftHeadConfig
    from jetspec_sglang.draft_vocab import DraftVocab, count_tokens, rank_tokens, save_draft_vocab

    files = [x for x in (a.data or str(pathlib.Path(a.head) / "training_data.jsonl.xz")).split(",") if x]
    vocab_size = DraftHeadConfig.from_dict(json.loads((pathlib.Path(a.head) / "config.json").read_text())).vocab_size

    def responses():
        for name in files:
            with (lzma.open(name, "rt") if name.endswith(".xz") else open(name)) as f:
                for line in f:
                    if line.strip():
                        yield json.loads(line)["response_ids"]

    counts_V = count_tokens(responses(), vocab_size)
    source = (f"{int(counts_V.sum())} response tokens of {', '.join(pathlib.Path(x).name for x in files)}; "
              f"{int((counts_V > 0).sum())} distinct")
    path = save_draft_vocab(a.head, DraftVocab(rank_tokens(counts_V), min(a.default_size, vocab_size), source))
    print(json.dumps({"out": path, "source": source, "default_size": a.default_size}))  # the CLI's result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jetspec_sglang.train", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_regenerate(sub)
    _add_cache(sub)
    _add_fit(sub)
    _add_eval(sub)
    _add_prompts(sub)
    _add_generate(sub)
    _add_online(sub)
    _add_score(sub)
    _add_natural(sub)
    _add_curves(sub)
    _add_draft_vocab(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    {"regenerate": _run_regenerate, "cache": _run_cache, "fit": _run_fit, "eval": _run_eval, "prompts": _run_prompts,
     "generate": _run_generate, "online": _run_online, "score": _run_score,
     "natural": _run_natural, "curves": _run_curves, "draft-vocab": _run_draft_vocab}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
