"""The soak of bench/soak.py in reduced form against the JETSPEC SmolLM2 server (session fixture): 200 mixed
requests at concurrency 16 with 5% dropped or aborted and 5% malformed, then greedy outputs of a sampled subset
against the plain server. Zero 5xx, every well-formed request completes, every malformed one gets a 4xx, greedy
== plain, KV back to 0, server RSS within the margin. The full form (1000 requests) runs from the README command.
Marked `server` (.ci/run runs it).
"""
import json

import pytest

from reliability import load_soak

pytestmark = pytest.mark.server

REQUESTS = 200


def test_reduced_soak(jetspec_server, plain_server, smollm2_dir, server_logs):
    soak = load_soak()
    cfg = soak.SoakConfig(requests=REQUESTS, max_new_tokens=(4, 8, 16, 24), long_share=0.05, long_tokens=(400, 800),
                          compare=24, warmup=24, deadline=1500, request_timeout=600)
    summary = soak.soak(cfg, smollm2_dir, jetspec_server.url, jetspec_server.proc.pid, plain_server.url)
    (server_logs / "soak-reduced.json").write_text(json.dumps(summary, indent=2))
    report = soak.human(summary)
    counts = summary["counts"]
    assert sum(c["sent"] for c in counts.values()) == REQUESTS, report
    assert counts["aborted"]["sent"] == counts["malformed"]["sent"] == REQUESTS // 20, report
    assert summary["server_errors"] == 0 and summary["transport_errors"] == 0, f"{report}\n{summary['failures']}"
    assert counts["well_formed"]["ok"] == counts["well_formed"]["sent"], f"{report}\n{summary['failures']}"
    assert counts["malformed"]["ok"] == counts["malformed"]["sent"], f"{report}\n{summary['failures']}"
    assert summary["comparison"]["compared"] >= 20, report
    assert summary["comparison"]["equal"] == summary["comparison"]["compared"], \
        f"{report}\n{summary['comparison']['mismatches']}"
    assert summary["kv"]["idle"], report
    assert summary["verdict"]["rss_within_margin"], report
    assert summary["passed"], report
