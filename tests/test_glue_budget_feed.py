"""glue/budget_feed.py on CPU: SGLang's accept_index -> per-rank path counts, interval clock, log line, report.
(The CUDA path, pinned ring + events without synchronisation, is checked by bench/gpu_budget_check.py.)"""
import logging

import pytest
import torch

from jetspec_sglang.config import JetSpecConfig
from jetspec_sglang.glue.budget_feed import BudgetFeed


def test_accept_index_becomes_path_counts():
    feed = BudgetFeed(JetSpecConfig(budget=8, depth=3, budget_schedule=(8,)), "cpu")
    n = feed.begin_step(3)
    # flat ids b * N + i, root first, -1 padded: paths [0, 1, 4], [0], [0, 2, 3, 7]
    accept_index = torch.tensor([[0, 1, 4, -1], [8, -1, -1, -1], [16, 18, 19, 23]], dtype=torch.int32)
    feed.observe(accept_index, n)
    accept = feed.chooser.accept
    assert [accept.hit_rate(i) for i in range(1, 8)] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1 / 3, 0, 0, 1 / 3])
    assert accept.accept_length(8) == pytest.approx(1 + 5 / 3)  # (3 + 1 + 4) / 3 tokens per request
    assert accept.accept_length(4) == pytest.approx(1 + 3 / 3)


def test_fixed_policy_counts_steps_only_and_logs_at_the_interval(caplog):
    feed = BudgetFeed(JetSpecConfig(budget=8, depth=3, budget_auto=False), "cpu", log_interval=2)
    with caplog.at_level(logging.INFO, logger="jetspec_sglang.glue.budget_feed"):
        for _ in range(4):
            n = feed.begin_step(1)
            feed.observe(torch.tensor([[0, 1, -1, -1]], dtype=torch.int32), n)
    assert feed.chooser.accept.seen.sum() == 0, "fixed and ladder policies keep no acceptance statistics"
    lines = [r.getMessage() for r in caplog.records if "JETSPEC budget" in r.getMessage()]
    assert lines == ["JETSPEC budget (fixed): N=8x2"] * 2
    assert feed.report() == {"policy": "fixed", "max_budget": 8, "decode_steps": 4, "chosen": {"8": 4}}


def test_interrupt_drops_the_interval_of_a_prefill():
    feed = BudgetFeed(JetSpecConfig(budget=8, depth=3), "cpu")
    chooser = feed.chooser
    for now in (0.0, 0.1, 0.2):  # two intervals at the first probed width: warm-up, then one cell
        chooser.begin_step(2, now)
    chooser.interrupt()
    chooser.begin_step(2, 5.0)  # after a prefill: the 0.2 -> 5.0 interval is not a decode step
    assert chooser.cost.estimate(2, 8) == pytest.approx(0.1)
