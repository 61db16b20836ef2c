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
    held = heldout_points(metrics_path)
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
        x = [p["supervised_positions"] for p in held]
        ax_held.plot(x, [p["agree"][0] for p in held], "o-", lw=1, label="held-out agreement d1")
        ax_tau = ax_held.twinx()
        for n in held[-1]["tau"]:
            ax_tau.plot(x, [p["tau"].get(n, float("nan")) for p in held], "--", lw=1, label=f"tau@{n}")
        ax_tau.plot(x, [p["tau_chain"] for p in held], ":", lw=1, label="tau chain")
        ax_held.set(xlabel="supervised positions seen", ylabel="depth-1 agreement", ylim=(0, 1),
                    xscale="log" if min(x) > 0 else "linear",  # a fit's curve starts at 0 positions
                    title="held-out (greedy sequences)")
        ax_tau.set(ylabel="accept length per round (tau)")
        ax_held.grid(alpha=0.3)
        ax_held.legend(loc="upper left", fontsize=8)
        ax_tau.legend(loc="lower right", fontsize=8)
    _save(fig, png_path)


def _save(fig, png_path: str | pathlib.Path) -> None:
    """Write the figure through a temporary file (a reader never sees half a PNG) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    png_path = pathlib.Path(png_path)
    tmp = png_path.with_name(png_path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(png_path)


def heldout_points(metrics_path: str | pathlib.Path) -> list[dict]:
    """The held-out lines of a metrics.jsonl as {step, supervised_positions} + the line's held-out scores (agree per
    depth, kl_mean, tau, tau_chain), in file order; a line written without a count takes the last count seen."""
    seen, out = 0, []
    for r in read_metrics(metrics_path):
        seen = r.get("supervised_positions", seen)
        if "heldout" in r:
            out.append({"step": r.get("step"), "supervised_positions": seen, **r["heldout"]})
    return out


def compare_runs(runs: dict[str, str | pathlib.Path], png_path: str | pathlib.Path | None = None) -> list[dict]:
    """Several runs' held-out curves side by side: one row per run (its first and last held-out point, the best
    depth-1 agreement seen) and, when png_path is given, held-out depth-1/2 agreement and KL against supervised
    positions (runs continued from one head share its x axis). Raises if a run has no held-out line."""
    rows, curves = [], {}
    for name, path in runs.items():
        pts = heldout_points(path)
        if not pts:
            raise ValueError(f"--run {name}={path}: no held-out lines (was the run made with --eval-every 0?)")
        curves[name] = pts
        first, last = pts[0], pts[-1]
        rows.append({"run": name, "points": len(pts), "positions_first": first["supervised_positions"],
                     "positions_last": last["supervised_positions"], "agree1_first": first["agree"][0],
                     "agree1_last": last["agree"][0], "agree1_best": max(p["agree"][0] for p in pts),
                     "agree2_last": last["agree"][1] if len(last["agree"]) > 1 else None,
                     "kl_first": first["kl_mean"], "kl_last": last["kl_mean"], "tau_chain_last": last.get("tau_chain")})
    if png_path is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax_a, ax_kl) = plt.subplots(1, 2, figsize=(12, 4))
        for name, pts in curves.items():
            x = [p["supervised_positions"] / 1e6 for p in pts]
            line, = ax_a.plot(x, [p["agree"][0] for p in pts], "o-", lw=1, label=f"{name} depth 1")
            if len(pts[0]["agree"]) > 1:
                ax_a.plot(x, [p["agree"][1] for p in pts], "s--", lw=1, color=line.get_color(),
                          label=f"{name} depth 2")
            ax_kl.plot(x, [p["kl_mean"] for p in pts], "o-", lw=1, label=name)
        ax_a.set(xlabel="supervised positions (M)", ylabel="held-out greedy agreement", title="held-out agreement")
        ax_kl.set(xlabel="supervised positions (M)", ylabel="KL (nats / slot, mean over depths)",
                  title="held-out KL")
        for ax in (ax_a, ax_kl):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        _save(fig, png_path)
    return rows


def runs_table(rows: list[dict]) -> str:
    """compare_runs' rows as a markdown table."""
    lines = ["| run | held-out points | positions (M) | depth-1 agreement first -> last (best) | depth-2 last | "
             "KL first -> last | chain tau last |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        d2 = "-" if r["agree2_last"] is None else f"{r['agree2_last']:.3f}"
        tau = "-" if r["tau_chain_last"] is None else f"{r['tau_chain_last']:.2f}"
        lines.append(f"| {r['run']} | {r['points']} | {r['positions_first'] / 1e6:.1f} -> "
                     f"{r['positions_last'] / 1e6:.1f} | {r['agree1_first']:.3f} -> {r['agree1_last']:.3f} "
                     f"({r['agree1_best']:.3f}) | {d2} | {r['kl_first']:.3f} -> {r['kl_last']:.3f} | {tau} |")
    return "\n".join(lines) + "\n"
