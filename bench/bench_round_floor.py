"""Kernel floor of a T-row target forward: what the verify of an N = T node tree must cost on this CPU, whatever the
Python around it does.

Times, outside any server, the products and kernels one forward of the target runs per row count T, in layer order
with the model's real bf16 weights (so weights stream from memory as in serving): the 30 layers' four linears
(packed oneDNN, packed_linear.py, as a JETSPEC server runs them), the LM head, the attention (SDPA's CPU flash
kernel over prefix + T keys, H / G / E of the model, an additive mask when T > 1), the K/V gather from a KV pool
(index_select of scattered slots, as glue/cpu_attention.py does), and SGLang's own SiluAndMul and RMSNorm (with the
residual add) through their forward_native, the path a CPU without AMX runs. Rotary embedding, residual adds and views are left out (small, the same kind at 1 and T).
T = 1 is the plain decode step's share; T = N the verify forward's. Median of --reps passes per T.

With --round-results (a bench_round.py results.json of the same machine) the table also reads the in-server
numbers: the packed plain step and each budget's verify-forward phase, and splits the verify's excess over a plain
step into this kernel floor and the rest (per-op dispatch, Python, bookkeeping at T rows).

    python bench/bench_round_floor.py --rows 1 8 16 32 --round-results bench/results/round_cpu_v9/results.json \
        --out runs/round_floor

Writes OUT/results.json, OUT/results.md and OUT/floor.png (ms per component and row count).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from sglang.srt.layers.activation import SiluAndMul
from sglang.srt.layers.layernorm import RMSNorm

from jetspec_sglang.packed_linear import pack_weight, packable_dtype, packed_linear

COMPONENTS = ("linears", "lm_head", "attention", "kv_gather", "mlp_act", "rmsnorm")
LABELS = {"linears": "layer linears", "lm_head": "LM head", "attention": "attention (SDPA)",
          "kv_gather": "K/V gather", "mlp_act": "SiLU x up", "rmsnorm": "RMSNorm"}
POOL_SLOTS = 8192  # KV pool rows the gather reads from (the round bench's --max-total-tokens)


@dataclass
class TargetWeights:
    """One decoder's linears as a JETSPEC CPU server holds them (merged qkv and gate_up, packed where bf16 packs)
    and an SGLang RMSNorm of the model's width and dtype."""

    qkv: list  # per layer, [(H + 2G) E, M]
    o: list  # [M, H E]
    gate_up: list  # [2 I, M]
    down: list  # [M, I]
    lm_head: torch.Tensor  # [V, M]
    norm: RMSNorm  # weight [M]
    heads: int  # H
    kv_heads: int  # G
    head_dim: int  # E

    @property
    def hidden(self) -> int:  # M
        return int(self.norm.weight.shape[0])


def _maybe_pack(weight_OI: torch.Tensor) -> torch.Tensor:
    return pack_weight(weight_OI) if packable_dtype(weight_OI.dtype) else weight_OI


def _linear(x_TI: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return packed_linear(x_TI, weight) if weight.is_mkldnn else F.linear(x_TI, weight)


def load_weights(model_dir: str | Path, dtype: torch.dtype = torch.bfloat16) -> TargetWeights:
    """The target's decoder weights from a Llama-layout safetensors folder (tied LM head = the embedding)."""
    from safetensors.torch import load_file

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    tensors = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    if not tensors:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}; pass a prepared model folder (--model)")

    def w(name):
        return tensors[name].to(dtype)

    layers = range(int(cfg["num_hidden_layers"]))
    pre = "model.layers.{}."
    qkv = [_maybe_pack(torch.cat([w(pre.format(i) + f"self_attn.{p}_proj.weight") for p in "qkv"])) for i in layers]
    o = [_maybe_pack(w(pre.format(i) + "self_attn.o_proj.weight")) for i in layers]
    gate_up = [_maybe_pack(torch.cat([w(pre.format(i) + f"mlp.{p}_proj.weight") for p in ("gate", "up")]))
               for i in layers]
    down = [_maybe_pack(w(pre.format(i) + "mlp.down_proj.weight")) for i in layers]
    lm = tensors.get("lm_head.weight", tensors["model.embed_tokens.weight"]).to(dtype)
    heads, kv_heads = int(cfg["num_attention_heads"]), int(cfg["num_key_value_heads"])
    norm = RMSNorm(int(cfg["hidden_size"]), eps=float(cfg.get("rms_norm_eps", 1e-6))).to(dtype)
    norm.weight.data.copy_(w("model.norm.weight"))
    return TargetWeights(qkv, o, gate_up, down, _maybe_pack(lm), norm, heads, kv_heads, int(cfg["hidden_size"]) // heads)


def time_forward(wts: TargetWeights, pools: tuple[torch.Tensor, torch.Tensor], rows: int, prefix: int,
                 generator: torch.Generator) -> dict[str, float]:
    """Seconds per component for one T = `rows` forward, in layer order (each layer's weights once); `pools`: the
    K and V pool [POOL_SLOTS + 1, G, E] the gather reads."""
    T, M = rows, wts.hidden
    H, G, E = wts.heads, wts.kv_heads, wts.head_dim
    dtype = wts.norm.weight.dtype
    K = prefix + T
    k_pool, v_pool = pools
    act = SiluAndMul()
    slots_K = torch.randperm(POOL_SLOTS, generator=generator)[:K] + 1  # a spec-decoded prefix is scattered
    visible_TK = torch.ones(T, K, dtype=torch.bool)
    visible_TK[:, prefix:] = torch.tril(torch.ones(T, T, dtype=torch.bool))  # the tree block (a chain here)
    mask = (None if T == 1 else
            torch.zeros(1, 1, T, K, dtype=dtype).masked_fill_(~visible_TK[None, None], float("-inf")))
    x_TM = torch.randn(T, M, generator=generator).to(dtype)
    res_TM = torch.randn(T, M, generator=generator).to(dtype)
    spent = dict.fromkeys(COMPONENTS, 0.0)

    def lap(name, start):
        now = time.perf_counter()
        spent[name] += now - start
        return now

    for i in range(len(wts.qkv)):
        t = time.perf_counter()
        h_TM, res_TM = wts.norm.forward_native(x_TM, res_TM)
        t = lap("rmsnorm", t)
        qkv_TD = _linear(h_TM, wts.qkv[i])
        t = lap("linears", t)
        k_KGE = k_pool.index_select(0, slots_K)
        v_KGE = v_pool.index_select(0, slots_K)
        t = lap("kv_gather", t)
        q_1HTE = qkv_TD[:, :H * E].reshape(T, H, E).transpose(0, 1)[None]
        out_1HTE = F.scaled_dot_product_attention(q_1HTE, k_KGE.transpose(0, 1)[None], v_KGE.transpose(0, 1)[None],
                                                  attn_mask=mask, enable_gqa=H != G)
        t = lap("attention", t)
        x_TM = _linear(out_1HTE[0].transpose(0, 1).reshape(T, H * E), wts.o[i])
        t = lap("linears", t)
        h_TM, res_TM = wts.norm.forward_native(x_TM, res_TM)
        t = lap("rmsnorm", t)
        gu_T2I = _linear(h_TM, wts.gate_up[i])
        t = lap("linears", t)
        act_TI = act.forward_native(gu_T2I)
        t = lap("mlp_act", t)
        x_TM = _linear(act_TI, wts.down[i])
        lap("linears", t)
    t = time.perf_counter()
    h_TM, _ = wts.norm.forward_native(x_TM, res_TM)
    t = lap("rmsnorm", t)
    _linear(h_TM, wts.lm_head)
    lap("lm_head", t)
    return spent


def measure(wts: TargetWeights, rows: list[int], prefix: int, reps: int, seed: int = 0) -> dict[int, dict]:
    """{T: {component: median ms}} over `reps` passes per T (after one warm-up pass), T interleaved per pass;
    under inference_mode, as a server runs."""
    gen = torch.Generator().manual_seed(seed)
    G, E, dtype = wts.kv_heads, wts.head_dim, wts.norm.weight.dtype
    pools = tuple(torch.randn(POOL_SLOTS + 1, G, E, generator=gen).to(dtype) for _ in range(2))
    passes = {T: [] for T in rows}
    with torch.inference_mode():
        for T in rows:
            time_forward(wts, pools, T, prefix, gen)
        for _ in range(reps):
            for T in rows:
                passes[T].append(time_forward(wts, pools, T, prefix, gen))
    return {T: {c: 1e3 * statistics.median(p[c] for p in passes[T]) for c in COMPONENTS} for T in rows}


def floor_table(ms: dict[int, dict], round_results: dict | None = None) -> list[dict]:
    """One row per T: each component (ms), their total, the excess over T = 1; with bench_round results: the
    packed plain step, the in-server verify forward of budget N = T, its excess over the plain step and the
    share of that excess the kernels explain. Example: kernels 20 ms at T = 1 and 27 at T = 16, plain step 40,
    verify forward 52 -> kernel excess 7, verify excess 12, the rest 5 (0.12 plain steps)."""
    base = sum(ms[min(ms)].values())
    plain_ms, verify_ms = None, {}
    if round_results:
        for row in round_results.get("table", []):
            if row.get("bs") == 1 and row.get("plain_packed_ms") and row.get("vocab", "auto") == "auto":
                plain_ms = row["plain_packed_ms"]
                verify_ms[int(row["N"])] = row["jetspec"]["phases_ms"]["verify_forward"]
    table = []
    for T in sorted(ms):
        total = sum(ms[T].values())
        kernel_excess = total - base
        row = {"rows": T, **{c: ms[T][c] for c in COMPONENTS}, "total": total, "excess": kernel_excess}
        if plain_ms:
            row.update(plain_packed_ms=plain_ms, excess_plain_steps=kernel_excess / plain_ms)
            if T in verify_ms:
                verify_excess = verify_ms[T] - plain_ms
                rest = verify_excess - kernel_excess
                row.update(verify_forward_ms=verify_ms[T], verify_excess_ms=verify_excess, rest_ms=rest,
                           rest_plain_steps=rest / plain_ms)
        table.append(row)
    return table


def markdown(table: list[dict]) -> str:
    head = ["T rows"] + [LABELS[c] for c in COMPONENTS] + ["total", "excess over T = 1"]
    extra = any("plain_packed_ms" in r for r in table)
    if extra:
        head += ["excess / plain step", "verify fwd in server", "its excess over a plain step", "rest (not kernels)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = [str(r["rows"])] + [f"{r[c]:.2f}" for c in COMPONENTS] + [f"{r['total']:.2f}", f"{r['excess']:.2f}"]
        if extra:
            cells.append(f"{r['excess_plain_steps']:.3f}" if "excess_plain_steps" in r else "")
            if "verify_forward_ms" in r:
                cells += [f"{r['verify_forward_ms']:.1f}", f"{r['verify_excess_ms']:.1f}",
                          f"{r['rest_ms']:.1f} ms = {r['rest_plain_steps']:.3f} plain steps"]
            else:
                cells += ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [str(r["rows"]) for r in table]
    bottom = [0.0] * len(table)
    for c in COMPONENTS:
        vals = [r[c] for r in table]
        ax.bar(xs, vals, bottom=bottom, label=LABELS[c])
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xlabel("rows per forward (1 = plain decode step, N = a verify of N nodes)")
    ax.set_ylabel("ms per forward (kernels only)")
    ax.set_title("Kernel floor of the target forward, SmolLM2-135M bf16, this CPU")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="a prepared name (smollm2) or a model folder")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 8, 16, 32], help="row counts T (1 is the base)")
    p.add_argument("--prefix", type=int, default=180, help="committed keys each query attends to besides the block")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--round-results", default=None, help="a bench_round.py results.json of the same machine")
    p.add_argument("--out", default="runs/round_floor")
    args = p.parse_args(argv)
    if 1 not in args.rows:
        p.error(f"--rows {args.rows}: include 1 (the plain decode step every excess is measured from)")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    from jetspec_sglang.models import MODEL_DIRNAMES, prepare_model

    model = str(prepare_model(args.model)) if args.model in MODEL_DIRNAMES else args.model
    wts = load_weights(model)
    ms = measure(wts, sorted(args.rows), args.prefix, args.reps)
    rounds = json.loads(Path(args.round_results).read_text()) if args.round_results else None
    table = floor_table(ms, rounds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "threads": torch.get_num_threads(),
                                                  "table": table}, indent=1))
    md = markdown(table)
    (out / "results.md").write_text(md)
    plot(table, out / "floor.png")
    print(md)
    print(f"wrote {out}/results.json, results.md, floor.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
