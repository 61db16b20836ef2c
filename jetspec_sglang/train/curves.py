"""Training curves: loss and per-depth greedy agreement from a metrics.jsonl, drawn to a PNG (matplotlib, Agg).

Imports no sglang; matplotlib is the `train` extra and is imported only here, when a curve is drawn.
"""
from __future__ import annotations

import json
import pathlib


def read_metrics(path: str | pathlib.Path) -> list[dict]:
    path = pathlib.Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(metrics_path: str | pathlib.Path, png_path: str | pathlib.Path, title: str = "") -> None:
    """Left: training loss (weighted KL, nats) vs step. Right: agreement at depths 1, 2, 4, 8 and the last."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in read_metrics(metrics_path) if "loss" in r]  # held-out-only lines have no training loss
    if not recs:
        return
    steps = [r["step"] for r in recs]
    seen, held = 0, []
    for r in read_metrics(metrics_path):
        seen = r.get("supervised_positions", seen)
        if "heldout" in r:
            held.append({**r, "supervised_positions": seen})
    fig, axes = plt.subplots(1, 3 if held else 2, figsize=(16 if held else 11, 4))
    ax_loss, ax_agree = axes[0], axes[1]
    ax_loss.plot(steps, [r["loss"] for r in recs], lw=1)
    ax_loss.set(xlabel="step", ylabel="forward KL (nats / slot)", title=f"{title} loss".strip(), yscale="log")
    ax_loss.grid(alpha=0.3)
    depth = len(recs[0]["agree"])
    for k in sorted({1, 2, 4, 8, depth} & set(range(1, depth + 1))):
        ax_agree.plot(steps, [r["agree"][k - 1] for r in recs], lw=1, label=f"depth {k}")
    ax_agree.set(xlabel="step", ylabel="argmax draft == argmax target", title="per-depth greedy agreement",
                 ylim=(0, 1))
    ax_agree.grid(alpha=0.3)
    ax_agree.legend(fontsize=8)
    if held:  # online runs: held-out scores against supervised positions seen (the learning curve)
        ax_held = axes[2]
        x, last = [], 0
        for r in held:  # a final held-out line written without the count reuses the last count seen
            last = r.get("supervised_positions", last)
            x.append(last)
        ax_held.plot(x, [r["heldout"]["agree"][0] for r in held], "o-", lw=1, label="held-out agreement d1")
        ax_tau = ax_held.twinx()
        for n in held[-1]["heldout"]["tau"]:
            ax_tau.plot(x, [r["heldout"]["tau"].get(n, float("nan")) for r in held], "--", lw=1, label=f"tau@{n}")
        ax_tau.plot(x, [r["heldout"]["tau_chain"] for r in held], ":", lw=1, label="tau chain")
        ax_held.set(xlabel="supervised positions seen", ylabel="depth-1 agreement", ylim=(0, 1),
                    xscale="log" if min(x) > 0 else "linear",  # a fit's curve starts at 0 positions
                    title="held-out (greedy sequences)")
        ax_tau.set(ylabel="accept length per round (tau)")
        ax_held.grid(alpha=0.3)
        ax_held.legend(loc="upper left", fontsize=8)
        ax_tau.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    png_path = pathlib.Path(png_path)
    tmp = png_path.with_name(png_path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(png_path)
