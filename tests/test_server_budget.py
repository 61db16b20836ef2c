"""Real SGLang servers on 127.0.0.1 (CPU, fp32): the budget policies of docs/auto-budget.md against plain decoding.

Marked `server`. Greedy outputs must be identical token for token whatever budget each step uses, switches in
the middle of a request included, at concurrency 1 and 8.
"""

import pytest
from sglang_fixtures import eval_chat_prompts, generate_greedy

pytestmark = pytest.mark.server

MAX_NEW = 48
SERVER_FLAGS = ["--decode-log-interval", "5", "--mem-fraction-static", "0.2"]  # max-total-tokens caps the pool


@pytest.fixture(scope="module")
def prompts(smollm2_dir):
    return eval_chat_prompts(smollm2_dir, gsm8k=4, humaneval=4)


def _run(server, prompts, concurrency):
    return generate_greedy(server, prompts, concurrency, MAX_NEW)


@pytest.fixture(scope="module")
def plain_outputs(smollm2_dir, server_logs, prompts):
    from jetspec_sglang.serving import Server, ServerSpec

    server = Server(ServerSpec(model=smollm2_dir, extra_args=list(SERVER_FLAGS)), server_logs / "plain-8.log").start()
    try:
        return _run(server, prompts, 4)
    finally:
        server.stop()


def _serve_and_compare(smollm2_dir, smollm2_head, log, env, prompts, plain_outputs) -> tuple[dict, str]:
    """Start a JETSPEC server (budget 16, depth 7, width 4), run the prompts at concurrency 1 and 8, compare with
    plain decoding; returns (/get_server_info's jetspec_budget, the server log)."""
    from jetspec_sglang.serving import Server, ServerSpec

    spec = ServerSpec(model=smollm2_dir, head=smollm2_head, budget=16, depth=7, max_running_requests=8,
                      extra_args=list(SERVER_FLAGS), env=dict({"JETSPEC_TREE_WIDTH": "4"}, **env))
    server = Server(spec, log).start()
    try:
        outs = {c: _run(server, prompts, c) for c in (1, 8)}
        status, info = server.get("/get_server_info")
    finally:
        server.stop()
    for c, got in outs.items():
        for i, (spec_out, plain) in enumerate(zip(got, plain_outputs)):
            assert spec_out["output_ids"] == plain["output_ids"], f"prompt {i} differs at concurrency {c}"
    assert status == 200
    return info["internal_states"][0]["jetspec_budget"], server.log_path.read_text()


def test_budget_switching_every_step_identical_to_plain(smollm2_dir, smollm2_head, server_logs, plain_outputs,
                                                        prompts):
    """JETSPEC_BUDGET_SCHEDULE forces a different budget at every decode step (mid-request switches through
    16, 1 (no draft), 4 and 2 (< L + 1), 8)."""
    schedule = [16, 1, 4, 2, 8, 1, 16, 4]
    state, log = _serve_and_compare(smollm2_dir, smollm2_head, server_logs / "jetspec-schedule.log",
                                    {"JETSPEC_BUDGET_SCHEDULE": ",".join(map(str, schedule))}, prompts,
                                    plain_outputs)
    assert state["policy"] == "schedule" and set(state["chosen"]) == {str(n) for n in schedule}
    assert "JETSPEC budget (schedule): N=" in log
    # budgets 2 and 4 (< L + 1 = 8) drafted 2- and 4-row blocks (the causal head's rows do not see later ones)
    assert "budgets N < 8 draft N rows" in log


def test_auto_budget_identical_to_plain_and_reported(smollm2_dir, smollm2_head, server_logs, plain_outputs,
                                                     prompts):
    """The default policy (auto; here with 50 % of decode time allowed for exploration, so that it switches
    often): /get_server_info reports its choices and estimates, the log its choices."""
    state, log = _serve_and_compare(smollm2_dir, smollm2_head, server_logs / "jetspec-auto.log",
                                    {"JETSPEC_BUDGET_EXPLORE": "0.5"}, prompts, plain_outputs)
    assert state["policy"] == "auto" and state["candidates"] == [1, 2, 4, 8, 16]
    assert len(state["chosen"]) >= 3 and state["explored_steps"] > 0, state
    assert state["accept_length"]["1"] == 1.0 and state["accept_length"]["16"] > 1.0, state
    assert all(state["round_ms"][str(n)] > 0 for n in state["candidates"]), state
    assert "JETSPEC budget (auto): N=" in log and "round_ms[" in log
