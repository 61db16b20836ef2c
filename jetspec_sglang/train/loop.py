"""The distillation loop: head-only training against the cached target, checkpoints, resume, metrics, export.

Step s reads sequences [s*B, (s+1)*B) of an endless stream of per-epoch permutations of the train sequences and
draws its anchors from a generator seeded by (seed, s), so a resumed run sees exactly the batches it would have seen.
AdamW, linear warm-up then cosine decay to min_lr_ratio * lr, grad-norm clip. The run directory holds
config.json, metrics.jsonl (one line per logged step), curve.png, ckpt/state.pt and, at the end, head/ (the official
checkpoint layout, bf16). jetspec-method.md 8. Imports no sglang.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import time

import torch
from tqdm import tqdm

from jetspec_sglang.draft_head import DraftHead, init_draft_head, load_draft_head, save_draft_head
from jetspec_sglang.draft_head_config import make_draft_head_config
from jetspec_sglang.taps import decoder_layers
from jetspec_sglang.train.blocks import make_batch, sample_anchors
from jetspec_sglang.train.cache import Cache, open_cache
from jetspec_sglang.train.curves import plot_curves
from jetspec_sglang.train.init_head import copy_target_layers, grow_head
from jetspec_sglang.train.loss import SampledVocab, depth_weights
from jetspec_sglang.train.recipe import HeadRecipe, scheduled_lr
from jetspec_sglang.train.step import distill_step

logger = logging.getLogger(__name__)

STATE_FILE = "ckpt/state.pt"
METRICS_FILE = "metrics.jsonl"
TRAINING_STATE = "training_state.json"  # beside an exported head: what it was trained with (online.py writes the same)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FitConfig(HeadRecipe):
    cache_dir: str  # from `python -m jetspec_sglang.train cache`
    out_dir: str  # run directory
    model: str  # target folder (only its embedding and lm_head are used)
    target_layer_ids: tuple[int, ...] = ()  # subset of the cached taps; () = all of them
    seqs_per_step: int = 4
    anchors_per_seq: int = 64
    norm_init: float = 0.1  # random init only: the final norm starts at this fraction of the target's final norm
    log_every: int = 10
    ckpt_every: int = 100
    max_steps_this_run: int = 0  # stop (with a checkpoint) after this many steps of this invocation; 0 = no limit
    threads: int = 2
    chunk: int = 512  # lm_head rows per fused-loss chunk
    eval_every: int = 250  # held-out scores (full vocabulary) every this many steps and at the end; 0 = never
    eval_sequences: int = 24  # the first held-out sequences of the cache scored then (anchors every 4th position)
    exact_vocab: int = 8192  # sampled-vocabulary loss: this many most frequent teacher tokens exact; 0 = full vocab
    tail_samples: int = 1024  # ... plus this many tail tokens drawn per step (loss.SampledVocab)


def learning_rate(cfg: FitConfig, step: int) -> float:
    """The recipe's schedule over the run's steps (recipe.scheduled_lr)."""
    return scheduled_lr(cfg, step, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))


def batch_for_step(cfg: FitConfig, reader: Cache, train_ids: list[int], step: int):
    """The (deterministic) BlockBatch of `step`."""
    n, per = len(train_ids), cfg.seqs_per_step
    picks = []
    for j in range(step * per, (step + 1) * per):
        epoch, pos = divmod(j, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
        picks.append(train_ids[int(perm[pos])])
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    seqs = [reader.sequence(i) for i in picks]
    if cfg.target_layer_ids:
        cols = tap_columns(reader, cfg.target_layer_ids)
        for seq in seqs:
            seq["taps_SF"] = seq["taps_SF"][:, cols]
    anchors = [sample_anchors(s["resp_start"], s["tokens_S"].shape[0], cfg.anchors_per_seq, gen) for s in seqs]
    return make_batch(seqs, anchors, cfg.block_size, cfg.mask_token_id, cfg.head_type == "causal")


def sampled_vocab(cfg: FitConfig, reader: Cache, target: "TargetParts") -> SampledVocab | None:
    """The step's logit columns (loss.SampledVocab), or None for the full vocabulary (--exact-vocab 0)."""
    vocab_size = target.lm_head_weight_VM.shape[0]
    if cfg.exact_vocab <= 0 or cfg.exact_vocab >= vocab_size:
        return None
    mass_V = torch.from_numpy(reader.teacher_mass(vocab_size))
    exact = mass_V.argsort(descending=True, stable=True)[:cfg.exact_vocab]
    return SampledVocab(exact, cfg.tail_samples, vocab_size)


def tap_columns(reader: Cache, layer_ids) -> torch.Tensor:
    cached, m = reader.layer_ids, reader.meta["hidden_size"]
    missing = [i for i in layer_ids if i not in cached]
    if missing:
        raise ValueError(f"--target-layer-ids {list(layer_ids)}: layers {missing} are not in the cache (cached "
                         f"{cached}); rebuild the cache with them or pick a subset")
    return torch.cat([torch.arange(cached.index(i) * m, (cached.index(i) + 1) * m) for i in layer_ids])


@dataclasses.dataclass
class TargetParts:
    """What the head borrows from the frozen target (bf16): its embedding, lm_head and final-norm weight."""

    embed_tokens: torch.nn.Module
    lm_head_weight_VM: torch.Tensor
    final_norm_weight_M: torch.Tensor
    layers: torch.nn.ModuleList  # the target's decoder layers (read by --init target-layers)
    config: object  # HF config


def load_target_parts(model_path: str) -> TargetParts:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16).eval()
    model.requires_grad_(False)
    return TargetParts(model.get_input_embeddings(), model.get_output_embeddings().weight,
                       model.model.norm.weight, decoder_layers(model), model.config)


def build_head(cfg: FitConfig, target: TargetParts, reader: Cache) -> DraftHead:
    """A fresh head: `init_head.copy_target_layers` (--init target-layers), or init_draft_head (seeded) with the
    final norm at norm_init x the target's final norm (--init random).

    Why not 1x for random init: at init the MASK embedding dominates every slot's residual stream and the tied
    lm_head copies it, so the first KL is 60-100 nats (SmolLM2); the head then learns a large constant output
    that cancels it and stays in a unigram basin. At 0.1x the first KL is ~15 nats.
    """
    head_cfg = make_draft_head_config(
        target.config, mask_token_id=cfg.mask_token_id, num_layers=cfg.num_layers, block_size=cfg.block_size,
        causal_head=cfg.head_type == "causal", target_layer_ids=list(cfg.target_layer_ids or reader.layer_ids),
        intermediate_size=cfg.intermediate_size, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim)
    if cfg.init_from:
        head = load_draft_head(cfg.init_from, target_config=target.config, dtype=torch.float32)
        wants, feeds = head.config.to_dict()["dflash_config"]["target_layer_ids"], list(head_cfg.target_layer_ids)
        if list(wants) != feeds:
            raise ValueError(f"--init-from {cfg.init_from} reads target layers {wants} but this fit feeds {feeds}; "
                             f"pass --target-layer-ids {','.join(map(str, wants))} (the cache must hold them)")
        logger.info("head initialised from %s%s", cfg.init_from,
                    f" + {cfg.grow_layers} identity layer(s)" if cfg.grow_layers else "")
        return grow_head(head, cfg.grow_layers, causal=cfg.head_type == "causal")
    head = init_draft_head(head_cfg, seed=cfg.seed)
    if cfg.init == "target-layers":
        ids = reader.train_indices()[:8]
        cols = tap_columns(reader, head_cfg.target_layer_ids)
        taps_TF = torch.cat([reader.sequence(i)["taps_SF"][1:, cols] for i in ids])  # position 0 is the sink
        src = copy_target_layers(head, target.layers, target.final_norm_weight_M, taps_TF)
        logger.info("head initialised from target layers %s", src)
    else:
        with torch.no_grad():
            head.norm.weight.copy_(cfg.norm_init * target.final_norm_weight_M.float())
    return head


def _save_state(path: pathlib.Path, step: int, head: DraftHead, opt: torch.optim.Optimizer, cfg: FitConfig,
                elapsed: float, positions: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "head": head.state_dict(), "optim": opt.state_dict(),
                "config": dataclasses.asdict(cfg), "elapsed_s": elapsed,
                "supervised_positions": positions}, tmp)
    os.replace(tmp, path)


def export_head(head: DraftHead, path: str | pathlib.Path) -> None:
    """Write the head in the official layout with bf16 weights (what the SGLang plugin loads)."""
    out = DraftHead(head.config)
    out.load_state_dict({k: v.detach().to(torch.bfloat16) for k, v in head.state_dict().items()})
    save_draft_head(out.to(torch.bfloat16), path)


# settings added after runs were checkpointed: the value that reproduces what those runs did
_BEFORE_FIELD = {"exact_vocab": 0, "tail_samples": 1024, "init_from": "", "grow_layers": 0, "hard_mix": 0.0}


def _comparable(cfg: dict) -> dict:
    """The settings a resumed run must share with its checkpoint (JSON-normalised: tuples -> lists)."""
    return {k: v for k, v in json.loads(json.dumps({**_BEFORE_FIELD, **cfg})).items()
            if k not in ("max_steps_this_run", "threads", "log_every", "ckpt_every", "out_dir", "eval_every",
                         "eval_sequences")}


def fit(cfg: FitConfig, resume: bool = False) -> pathlib.Path:
    """Train (or resume) a head; returns the run directory. The final head is written to out_dir/head."""
    torch.set_num_threads(cfg.threads)
    out = pathlib.Path(cfg.out_dir)
    state_path, metrics_path = out / STATE_FILE, out / METRICS_FILE
    if state_path.exists() and not resume:
        raise FileExistsError(f"--out {out} already holds a run ({state_path}); pass --resume to continue it or "
                              f"choose another --out")
    reader = open_cache(cfg.cache_dir)
    train_ids = reader.train_indices()
    target = load_target_parts(cfg.model)
    head = build_head(cfg, target, reader)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    prior = read_training_state(cfg.init_from) if cfg.init_from else {}
    start, elapsed0, positions = 0, 0.0, int(prior.get("supervised_positions", 0))  # the curve continues
    if resume and state_path.exists():
        state = torch.load(state_path, weights_only=False)
        if _comparable(state["config"]) != _comparable(dataclasses.asdict(cfg)):
            raise ValueError(f"--resume: {state_path} was trained with {state['config']}; resume with the same "
                             f"arguments (only --max-steps-this-run/--threads/--log-every/--ckpt-every may change)")
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optim"])
        start, elapsed0, positions = state["step"], state["elapsed_s"], state.get("supervised_positions", 0)
        truncate_metrics(metrics_path, start)
        logger.info("resumed %s at step %d", out, start)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1) + "\n")
    weights_L = depth_weights(cfg.block_size - 1, cfg.depth_decay)
    vocab = sampled_vocab(cfg, reader, target)
    logger.info("fit: %d train sequences, head %s, %d params", len(train_ids), head.config.to_dict()["dflash_config"],
                sum(p.numel() for p in head.parameters()))
    window = _Window(cfg.block_size - 1)
    held_ids = reader.held_out_indices()[:cfg.eval_sequences] if cfg.eval_every > 0 else []
    if held_ids and start == 0:  # where the curve starts (a head from --init-from is not at zero)
        append_metrics(metrics_path, heldout_line(head, target, reader, held_ids, 0, positions))
    t_run = time.time()
    end = cfg.steps if not cfg.max_steps_this_run else min(cfg.steps, start + cfg.max_steps_this_run)
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, desc=f"fit {cfg.head_type}", unit="step")
    step = start
    for step in bar:
        lr = learning_rate(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = batch_for_step(cfg, reader, train_ids, step)
        res = distill_step(head, target.embed_tokens, target.lm_head_weight_VM, batch, weights_L, cfg.chunk,
                           vocab=vocab, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + 1),
                           hard_mix=cfg.hard_mix)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip))
        opt.step()
        window.add(res, gnorm)
        positions += int(res.count_L.sum())
        if (step + 1) % cfg.log_every == 0 or step + 1 == end:
            rec = window.flush(step + 1, lr, elapsed0 + time.time() - t_run)
            append_metrics(metrics_path, rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", agree1=f"{rec['agree'][0]:.2f}",
                            tok_s=f"{rec['tokens_per_s']:.0f}", refresh=False)
        if held_ids and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            append_metrics(metrics_path, heldout_line(head, target, reader, held_ids, step + 1, positions))
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == end:
            _save_state(state_path, step + 1, head, opt, cfg, elapsed0 + time.time() - t_run, positions)
            plot_curves(metrics_path, out / "curve.png", title=f"{cfg.head_type} head")
    bar.close()
    if end == cfg.steps:
        export_head(head, out / "head")
        write_training_state(out, cfg, elapsed0 + time.time() - t_run, positions, prior)
        logger.info("fit: finished %d steps in %.0f s; head in %s", cfg.steps, elapsed0 + time.time() - t_run,
                    out / "head")
    return out


def read_training_state(head_dir: str | pathlib.Path) -> dict:
    """The training_state.json beside a head ({} when it has none)."""
    path = pathlib.Path(head_dir) / TRAINING_STATE
    return json.loads(path.read_text()) if path.exists() else {}


def portable_config(cfg) -> dict:
    """The run's configuration for a committed file: the target as its folder name, not a path of this machine."""
    return dataclasses.asdict(cfg) | {"model": pathlib.Path(cfg.model).name}


def write_training_state(out: pathlib.Path, cfg: FitConfig, elapsed: float, positions: int, prior: dict) -> dict:
    """out/head/training_state.json + metrics.jsonl: what a fresh clone needs to continue the head (`fit
    --init-from out/head`, or `online --init-from`): steps, supervised positions (the prior head's included), wall
    time, the exact configuration, the last held-out scores and the head it continued from."""
    metrics = out / METRICS_FILE
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.exists() else []
    held = [r["heldout"] for r in lines if "heldout" in r]
    state = {"step": cfg.steps, "elapsed_s": round(elapsed, 1), "supervised_positions": positions,
             "trainer": "fit", "config": portable_config(cfg), "final": {"heldout": held[-1]} if held else {},
             "continued_from": {k: prior[k] for k in ("step", "elapsed_s", "supervised_positions", "trainer")
                                if k in prior} | ({"head": cfg.init_from} if cfg.init_from else {})}
    return save_head_state(out, state)


def save_head_state(out: pathlib.Path, state: dict) -> dict:
    """Write out/head/training_state.json and copy the run's metrics.jsonl beside it (fit and online)."""
    (out / "head" / TRAINING_STATE).write_text(json.dumps(state, indent=1) + "\n")
    if (out / METRICS_FILE).exists():
        shutil.copy(out / METRICS_FILE, out / "head" / METRICS_FILE)
    return state


def heldout_line(head: DraftHead, target: TargetParts, reader: Cache, ids: list[int], step: int,
                 positions: int) -> dict:
    """A metrics line of full-vocabulary held-out scores (what curves.plot_curves draws against positions seen)."""
    from jetspec_sglang.train.evaluate import score_heldout  # evaluate imports this module

    scores = score_heldout(head, target, reader, ids, anchor_stride=4)
    return dict(step=step, supervised_positions=positions,
                heldout=dict(agree=scores["agree"], kl_mean=round(scores["kl_mean"], 4), tau={},
                             tau_chain=round(scores["accept_len"] + 1, 4), sequences=len(ids)))


def append_metrics(path: pathlib.Path, rec: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def truncate_metrics(path: pathlib.Path, step: int) -> None:
    """Drop metric lines logged after the checkpoint step (they will be recomputed)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in lines))


class _Window:
    """Running sums between two metric lines."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.reset()

    def reset(self) -> None:
        self.loss, self.steps, self.gnorm = 0.0, 0, 0.0
        self.kl_L, self.agree_L, self.count_L = torch.zeros(self.depth), torch.zeros(self.depth), torch.zeros(self.depth)
        self.accept, self.blocks, self.t0 = 0.0, 0, time.time()

    def add(self, res, gnorm: float) -> None:
        self.loss += float(res.loss.detach())
        self.steps += 1
        self.gnorm += gnorm
        self.kl_L += res.kl_sum_L
        self.agree_L += res.agree_sum_L
        self.count_L += res.count_L
        self.accept += res.accept_sum
        self.blocks += res.num_blocks

    def flush(self, step: int, lr: float, elapsed: float) -> dict:
        dt = max(time.time() - self.t0, 1e-9)
        count = self.count_L.clamp_min(1)
        rec = dict(step=step, loss=self.loss / self.steps, lr=lr, grad_norm=self.gnorm / self.steps,
                   kl=[round(x, 4) for x in (self.kl_L / count).tolist()],
                   agree=[round(x, 4) for x in (self.agree_L / count).tolist()],
                   accept_len=self.accept / max(self.blocks, 1), tokens_per_s=float(self.count_L.sum()) / dt,
                   steps_per_s=self.steps / dt, elapsed_s=round(elapsed, 1))
        self.reset()
        return rec
