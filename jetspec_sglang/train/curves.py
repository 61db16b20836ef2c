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

    recs = read_metrics(metrics_path)
    if not recs:
        return
    steps = [r["step"] for r in recs]
    fig, (ax_loss, ax_agree) = plt.subplots(1, 2, figsize=(11, 4))
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
    fig.tight_layout()
    png_path = pathlib.Path(png_path)
    tmp = png_path.with_name(png_path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(png_path)
