"""What a serving sweep's records say: greedy parity with plain decoding, ratios to plain, the markdown, the plots.

Pure functions of the records written by serving_client.make_record (no server, no sglang). The reference of a
record is the plain-decoding record of the same dataset group at the same point (concurrency or rate); parity is
checked per prompt id on the generated texts of requests that succeeded in both.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from serving_client import CONCURRENCY, RATE
from serving_configs import PLAIN

SNIPPET = 60  # characters shown either side of the first difference


def _ok_texts(record: dict) -> dict[str, str]:
    return {pid: text for pid, text, err in zip(record["prompt_ids"], record["generated_texts"], record["errors"])
            if not err}


def first_difference(a: str, b: str) -> int:
    """Index of the first differing character; len of the shorter string when one is a prefix of the other."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def compare_outputs(reference: dict, record: dict) -> dict:
    """Per-prompt text comparison of `record` against `reference` (same group, both successful requests).

    'first' names the first prompt (in send order) whose texts differ, the character offset and both texts
    around it; None when every compared prompt is identical.
    """
    ref, got = _ok_texts(reference), _ok_texts(record)
    common = [pid for pid in record["prompt_ids"] if pid in ref and pid in got]
    diffs = [pid for pid in common if ref[pid] != got[pid]]
    first = None
    if diffs:
        pid = diffs[0]
        at = first_difference(ref[pid], got[pid])
        lo = max(0, at - SNIPPET)
        first = {"prompt_id": pid, "char": at, "plain": ref[pid][lo: at + SNIPPET], "got": got[pid][lo: at + SNIPPET]}
    return {"group": record["group"], "config": record["config"], "point": record["point"],
            "reference": f"{reference['config']}@{reference['point']}", "compared": len(common),
            "mismatches": len(diffs), "first": first}


def _plain_by_point(records: list[dict]) -> dict[tuple[str, str, int], dict]:
    return {(r["group"], r["point"], r.get("repeat", 0)): r for r in records if r["config"] == PLAIN}


def _reference(record: dict, plain: dict, records: list[dict]) -> dict | None:
    """Plain at the same point (and repeat), else the group's first plain record (texts do not depend on the
    point or the server instance)."""
    same = plain.get((record["group"], record["point"], record.get("repeat", 0)))
    if same is not None:
        return same
    return next((r for r in records if r["config"] == PLAIN and r["group"] == record["group"]), None)


def parity(records: list[dict]) -> list[dict]:
    """compare_outputs for every non-plain record; a record without any plain reference is an error entry."""
    plain = _plain_by_point(records)
    results = []
    for record in records:
        if record["config"] == PLAIN:
            continue
        reference = _reference(record, plain, records)
        if reference is None:
            results.append({"group": record["group"], "config": record["config"], "point": record["point"],
                            "reference": None, "compared": 0, "mismatches": 0, "first": None})
        else:
            results.append(compare_outputs(reference, record))
    return results


def plain_consistency(records: list[dict]) -> list[dict]:
    """Plain against its own first point per group: batch composition alone must not change greedy outputs.

    A mismatch here means the target's numerics depend on the batch, and JETSPEC mismatches may share that cause.
    """
    results = []
    for group in dict.fromkeys(r["group"] for r in records):
        plain = [r for r in records if r["config"] == PLAIN and r["group"] == group]
        results += [compare_outputs(plain[0], r) for r in plain[1:]]
    return results


def parity_failures(entries: list[dict]) -> list[dict]:
    """Entries that fail the check: any mismatch, or no plain run to compare with."""
    return [e for e in entries if e["mismatches"] or e["reference"] is None]


def combine_repeats(records: list[dict]) -> list[dict]:
    """One record per (group, config, point) out of the --repeats server instances that ran it.

    A point run once is kept as is. Otherwise the record is a copy of the instance with the median output tok/s
    (the lower median for an even count; its latencies, accept length and budget state are that instance's), its
    'output_throughput' is the median over instances, and 'repeats' lists every instance's tok/s and accept length
    in repeat order. Why: a CPU server instance keeps the speed it starts with (+-20 % between starts of the same
    config), so a single start per config cannot resolve a few per cent; restarts interleaved with the other
    configs and a median can.
    """
    by_key: dict[tuple, list[dict]] = {}
    for r in records:
        by_key.setdefault((r["group"], r["config"], r["point"]), []).append(r)
    out = []
    for group in by_key.values():
        if len(group) == 1:
            out.append(group[0])
            continue
        group = sorted(group, key=lambda r: r.get("repeat", 0))
        ranked = sorted(group, key=lambda r: r.get("output_throughput") or 0.0)
        combined = dict(ranked[(len(ranked) - 1) // 2])
        values = [r.get("output_throughput") for r in group]
        combined["output_throughput"] = statistics.median(v or 0.0 for v in values)
        combined["repeats"] = {"output_throughput": values, "accept_length": [r.get("accept_length") for r in group]}
        combined.pop("repeat", None)  # a median over instances; ratios pair it with plain's median
        combined["failed"] = sum(r["failed"] for r in group)
        out.append(combined)
    return out


def add_ratios(records: list[dict]) -> None:
    """Set 'x_plain' (output tok/s over plain's at the same group and point) on every record, in place."""
    plain = _plain_by_point(records)
    for record in records:
        ref = plain.get((record["group"], record["point"], record.get("repeat", 0)))
        ok = ref is not None and ref.get("output_throughput") and record.get("output_throughput") is not None
        record["x_plain"] = record["output_throughput"] / ref["output_throughput"] if ok else None


# --- markdown -------------------------------------------------------------------------------------------------------
def _num(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _pair(record: dict, metric: str) -> str:
    return f"{_num(record.get(f'median_{metric}_ms'), 0)} / {_num(record.get(f'p99_{metric}_ms'), 0)}"


def _ratio(value) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _configs(records: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["config"] for r in records))


def _points(records: list[dict], mode: str) -> list[str]:
    chosen = sorted({(r["point"], r["max_concurrency"] if mode == CONCURRENCY else r["request_rate"])
                     for r in records if r["mode"] == mode}, key=lambda p: p[1])
    return [p for p, _ in chosen]


def summary_table(records: list[dict], group: str) -> list[str]:
    """Rows: configs; columns: points; cells 'tok/s (x plain)'."""
    mine = [r for r in records if r["group"] == group]
    points = _points(mine, CONCURRENCY) + _points(mine, RATE)
    cells = {(r["config"], r["point"]): f"{_num(r['output_throughput'])} ({_ratio(r['x_plain'])})" + _spread(r)
             for r in mine}
    rows = [[c] + [cells.get((c, p), "–") for p in points] for c in _configs(mine)]
    return _table(["config"] + points, rows)


def _spread(record: dict) -> str:
    """' [lo-hi]' output tok/s over the repeats of a combined record, '' for a single run."""
    values = [v for v in (record.get("repeats") or {}).get("output_throughput", []) if v is not None]
    return f" [{min(values):.1f}-{max(values):.1f}]" if len(values) > 1 else ""


def repeats_table(records: list[dict], group: str) -> list[str]:
    """Combined records of --repeats runs: each server instance's output tok/s and the median's ratio to plain."""
    mine = [r for r in records if r["group"] == group and r.get("repeats")]
    if not mine:
        return []
    n = max(len(r["repeats"]["output_throughput"]) for r in mine)
    rows = []
    for r in mine:
        values = r["repeats"]["output_throughput"]
        lo, hi = min(v or 0.0 for v in values), max(v or 0.0 for v in values)
        rows.append([r["config"], r["point"]] + [_num(v) for v in values] + ["–"] * (n - len(values))
                    + [_num(r["output_throughput"]), f"{100 * (hi - lo) / r['output_throughput']:.0f}%"
                       if r["output_throughput"] else "–", _ratio(r["x_plain"])])
    return _table(["config", "point"] + [f"run {i + 1}" for i in range(n)] + ["median", "range / median",
                                                                               "median × plain"], rows)


def budget_table(records: list[dict], group: str) -> list[str]:
    """Auto-budget servers: per point, the share of decode steps at each budget and the estimates at the end
    of the point (accept length and round ms per candidate budget, at the last batch size)."""
    mine = [r for r in records if r["group"] == group and (r.get("budget_state") or {}).get("policy") == "auto"]
    rows = []
    for r in mine:
        state, chosen = r["budget_state"], r.get("budget_chosen") or {}
        total = sum(chosen.values()) or 1
        share = " ".join(f"{n}:{100 * c / total:.0f}%" for n, c in sorted(chosen.items(), key=lambda x: int(x[0])))
        tau = " ".join(f"{n}:{v:.2f}" for n, v in state.get("accept_length", {}).items())
        cost = " ".join(f"{n}:{'?' if v is None else f'{v:.0f}'}" for n, v in state.get("round_ms", {}).items())
        rows.append([r["config"], r["point"], share, str(state.get("current")), str(state.get("batch")), tau, cost,
                     f"{100 * state.get('explore_time_fraction', 0):.1f}%"])
    if not rows:
        return []
    return _table(["config", "point", "steps per budget", "current", "batch", "accept length (est.)",
                   "round ms (est.)", "explore time"], rows)


def detail_table(records: list[dict], group: str, mode: str) -> list[str]:
    mine = [r for r in records if r["group"] == group and r["mode"] == mode]
    key = (lambda r: r["max_concurrency"]) if mode == CONCURRENCY else (lambda r: r["request_rate"])
    configs = _configs(mine)
    mine.sort(key=lambda r: (key(r), configs.index(r["config"])))
    header = ["point", "config", "prompts", "out tok/s", "× plain", "retok tok/s", "req/s",
              "TTFT p50/p99 ms", "TPOT p50/p99 ms", "ITL p50/p99 ms", "E2E p50/p99 ms", "accept len"]
    rows = [[r["point"], r["config"], f"{r['completed']}/{r['num_prompts']}", _num(r["output_throughput"]),
             _ratio(r["x_plain"]), _num(r["output_throughput_retokenized"]), _num(r["request_throughput"], 2),
             _pair(r, "ttft"), _pair(r, "tpot"), _pair(r, "itl"), _pair(r, "e2e_latency"),
             _num(r["accept_length"], 2)] for r in mine]
    return _table(header, rows)


def _parity_lines(entries: list[dict], what: str) -> list[str]:
    rows = []
    for e in entries:
        first = e["first"]
        where = "–" if first is None else f"{first['prompt_id']} at char {first['char']}"
        rows.append([e["group"], e["config"], e["point"], e["reference"] or "none", str(e["compared"]),
                     str(e["mismatches"]), where])
    if not rows:
        return [f"No {what} comparisons."]
    return _table(["group", "config", "point", "reference", "prompts compared", "mismatches", "first difference"],
                  rows)


def markdown(records: list[dict], checks: list[dict], plain_checks: list[dict], failures: list[dict],
             meta: dict) -> str:
    """The whole report; `failures` are runs that produced no record (server start or bench errors)."""
    lines = [f"# Serving sweep: {Path(str(meta.get('model'))).name}", "",
             " · ".join(f"{k}: {meta[k]}" for k in ("head", "device", "output_len", "seed", "wall_s") if k in meta),
             "", "Output throughput is bench_serving's (server token counts); `retok` recounts the returned text with "
             "the tokenizer (cpu-sglang.md section 9); ratios are to plain decoding of the same group and point in "
             "this run.", ""]
    mismatched = sum(e["mismatches"] for e in checks)
    lines += [f"## Greedy parity with plain decoding: {'FAIL' if parity_failures(checks) else 'ok'} "
              f"({mismatched} mismatching prompts)", ""] + _parity_lines(checks, "JETSPEC") + [""]
    lines += ["Plain decoding against its own first point (batch composition only):", ""]
    lines += _parity_lines(plain_checks, "plain") + [""]
    for group in dict.fromkeys(r["group"] for r in records):
        lines += [f"## {group}: output tok/s (× plain)", ""] + summary_table(records, group) + [""]
        repeats = repeats_table(records, group)
        if repeats:
            lines += [f"### {group}: every server instance (configs restarted in turn; cells above are medians "
                      f"[min-max])", ""] + repeats + [""]
        budgets = budget_table(records, group)
        if budgets:
            lines += [f"### {group}: budgets chosen by auto (first point includes warm-up and start-up probe)",
                      ""] + budgets + [""]
        for mode, title in ((CONCURRENCY, "max concurrency"), (RATE, "Poisson request rate (req/s)")):
            if any(r["group"] == group and r["mode"] == mode for r in records):
                lines += [f"### {group}: {title}", ""] + detail_table(records, group, mode) + [""]
    odd = [r for r in records if not (0.9 <= (r["retokenized_ratio"] or 0) <= 1.1)]
    failed = [r for r in records if r["failed"]]
    if odd or failed or failures:
        lines += ["## Warnings", ""]
        lines += [f"- {r['group']} {r['config']} {r['point']}: retokenized/server token count "
                  f"{_num(r['retokenized_ratio'], 2)}: the output tok/s figure is suspect" for r in odd]
        lines += [f"- {r['group']} {r['config']} {r['point']}: {r['failed']} failed requests" for r in failed]
        lines += ["- " + " ".join(filter(None, (f["config"], f.get("group"), f.get("point"))))
                  + f": {f['error'].splitlines()[0]}" for f in failures]
        lines.append("")
    return "\n".join(lines)


# --- plots ----------------------------------------------------------------------------------------------------------
def plot(records: list[dict], out: Path) -> list[Path]:
    """throughput_vs_concurrency.png and latency_vs_rate.png (each only when its points exist)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(r["group"] for r in records))
    colors = {c: f"C{i % 10}" for i, c in enumerate(_configs(records))}
    written = []
    conc = [r for r in records if r["mode"] == CONCURRENCY]
    if conc:
        fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
        for ax, group in zip(axes[0], groups):
            for config in _configs(conc):
                pts = sorted((r["max_concurrency"], r["output_throughput"]) for r in conc
                             if r["group"] == group and r["config"] == config)
                if pts:
                    ax.plot(*zip(*pts), marker="o", color=colors[config], label=config)
            ax.set(xscale="log", xlabel="max concurrency", ylabel="output tok/s", title=group)
            ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        written.append(_save(fig, out / "throughput_vs_concurrency.png", plt))
    rate = [r for r in records if r["mode"] == RATE]
    if rate:
        fig, axes = plt.subplots(len(groups), 2, figsize=(11, 4 * len(groups)), squeeze=False)
        for row, group in zip(axes, groups):
            for ax, metric, name in ((row[0], "tpot", "TPOT"), (row[1], "e2e_latency", "E2E latency")):
                for config in _configs(rate):
                    mine = sorted((r for r in rate if r["group"] == group and r["config"] == config),
                                  key=lambda r: r["request_rate"])
                    if not mine:
                        continue
                    x = [r["request_rate"] for r in mine]
                    ax.plot(x, [r[f"median_{metric}_ms"] for r in mine], marker="o", color=colors[config],
                            label=f"{config} p50")
                    ax.plot(x, [r[f"p99_{metric}_ms"] for r in mine], marker="x", ls="--", color=colors[config],
                            label=f"{config} p99")
                ax.set(xlabel="request rate (req/s)", ylabel=f"{name} (ms)", title=f"{group}: {name}")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
        written.append(_save(fig, out / "latency_vs_rate.png", plt))
    return written


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
