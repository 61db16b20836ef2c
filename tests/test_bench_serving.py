"""bench/bench_serving.py: sweep plan, bench_serving records, parity with plain, ratios, report; one real tiny sweep.

The unit tests run on synthetic records (no server). `test_prompt_order_matches_sglang_loader` checks the one
assumption the parity check rests on against SGLang's own ShareGPT loader. The `server` test starts a plain and
a JETSPEC server on the tiny Qwen3 target and runs the whole CLI.
"""
import json
import math
import random
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))  # bench/ is not a package; its modules import each other as siblings

import bench_serving  # noqa: E402
from serving_client import CONCURRENCY, RATE, Point, RunError, bench_argv, check_prompt_lens, make_record, \
    prompt_order, sweep_points  # noqa: E402
from serving_configs import PLAIN, ServerConfig, attached_configs, ladder_config, server_spec, \
    sweep_configs  # noqa: E402
from serving_report import add_ratios, combine_repeats, compare_outputs, first_difference, markdown, parity, \
    parity_failures, plain_consistency, plot  # noqa: E402

from jetspec_sglang.config import ConfigError  # noqa: E402

IDS = ["gsm8k/1", "gsm8k/2", "HumanEval/3", "HumanEval/4"]
TEXTS = ["The answer is 4.", "def f():\n    return 1", "x = 2", "print('hi')"]


# ---------------------------------------------------------------- plan


def test_sweep_points_clamp_and_keys():
    points = sweep_points((1, 4, 16), (0.5, 2), available=12, waves=2, min_prompts=4, rate_prompts=20,
                          rate_max_concurrency=16)
    assert [p.key for p in points] == ["c1", "c4", "c16", "r0.5", "r2"]
    assert [p.num_prompts for p in points] == [4, 8, 12, 12, 12]
    assert points[0].mode == CONCURRENCY and math.isinf(points[0].request_rate)
    assert points[3].mode == RATE and points[3].max_concurrency == 16 and points[3].value == 0.5


def test_sweep_configs_names_and_server_flags():
    configs = sweep_configs([8, 16], depth=7, width=4, chain=True, ladders=["1:16,4:8,16:1"])
    assert [c.name for c in configs] == ["plain", "jetspec-b8", "jetspec-b16", "chain-l7", "auto-b16",
                                         "ladder-16-8-1"]
    chain, auto, ladder = configs[3], configs[4], configs[5]
    assert (chain.budget, chain.depth, chain.width) == (8, 7, 1)
    assert (ladder.budget, ladder.ladder) == (16, "1:16,4:8,16:1")
    plain_cmd = server_spec(configs[0], "M", "H", "cpu", "float32", 8192, 16, ["--x"]).command(1234)
    assert "--speculative-algorithm" not in plain_cmd and plain_cmd[-1] == "--x"
    spec = server_spec(ladder, "M", "H", "cpu", "float32", 8192, 16, [])
    cmd = spec.command(1234)
    assert cmd[cmd.index("--speculative-num-draft-tokens") + 1] == "16"
    assert cmd[cmd.index("--speculative-num-steps") + 1] == "7"
    assert spec.env == {"JETSPEC_TREE_WIDTH": "4", "JETSPEC_BUDGET_LADDER": "1:16,4:8,16:1"}
    assert server_spec(chain, "M", "H", "cpu", None, 8192, None, []).env == {"JETSPEC_TREE_WIDTH": "1",
                                                                              "JETSPEC_BUDGET": "8"}
    assert (auto.kind, auto.budget) == ("auto", 16)
    assert server_spec(auto, "M", "H", "cpu", None, 8192, None, []).env == {"JETSPEC_TREE_WIDTH": "4",
                                                                             "JETSPEC_BUDGET": "auto"}
    assert [c.name for c in sweep_configs([8], depth=7, width=4, chain=False, ladders=[], auto=False)] == \
        ["plain", "jetspec-b8"]


def test_sweep_configs_draft_vocab_variants():
    configs = sweep_configs([8], depth=7, width=4, chain=True, ladders=[], draft_vocabs=["full"])
    assert [c.name for c in configs] == ["plain", "jetspec-b8", "chain-l7", "auto-b8", "jetspec-b8-vfull",
                                         "auto-b8-vfull"]
    assert "JETSPEC_DRAFT_VOCAB" not in server_spec(configs[1], "M", "H", "cpu", None, 8192, None, []).env
    env = server_spec(configs[4], "M", "H", "cpu", None, 8192, None, []).env
    assert env == {"JETSPEC_TREE_WIDTH": "4", "JETSPEC_BUDGET": "8", "JETSPEC_DRAFT_VOCAB": "full"}
    with pytest.raises(ValueError, match="JETSPEC_DRAFT_VOCAB='some'"):
        sweep_configs([8], depth=7, width=4, chain=False, ladders=[], draft_vocabs=["some"])


def test_sweep_configs_plain_packed_reference():
    configs = sweep_configs([8], depth=7, width=4, chain=False, ladders=[], auto=False, plain_packed=True)
    assert [c.name for c in configs] == ["plain", "plain-packed", "jetspec-b8"]
    packed = server_spec(configs[1], "M", "H", "cpu", "bfloat16", 8192, None, [])
    assert packed.env == {"JETSPEC_CPU_PACKED_WEIGHTS": "on"} and packed.head is None
    assert "--speculative-algorithm" not in packed.command(1234)
    assert "JETSPEC_CPU_PACKED_WEIGHTS" not in server_spec(configs[2], "M", "H", "cpu", None, 8192, None, []).env


def test_sweep_configs_refuse_bad_input():
    with pytest.raises(ValueError, match="depth \\+ 1"):
        sweep_configs([4], depth=7, width=4, chain=False, ladders=[])
    with pytest.raises(ValueError, match="--depth"):
        sweep_configs([16], depth=None, width=4, chain=False, ladders=[])
    with pytest.raises(ValueError, match="share a name"):
        sweep_configs([16, 16], depth=7, width=4, chain=False, ladders=[])
    with pytest.raises(ConfigError, match="non-increasing"):
        ladder_config("1:8,4:16", depth=7, width=4)
    with pytest.raises(ConfigError, match="max_requests:budget"):
        ladder_config("1-16", depth=7, width=4)


def test_attached_configs():
    configs = attached_configs(["plain=http://127.0.0.1:30000/", "http://127.0.0.1:30001"])
    assert [(c.name, c.kind, c.url) for c in configs] == [("plain", "plain", "http://127.0.0.1:30000"),
                                                           ("attached-2", "attached", "http://127.0.0.1:30001")]
    with pytest.raises(ValueError, match="NAME="):
        attached_configs(["plain=127.0.0.1:30000"])
    with pytest.raises(ValueError, match="unique"):
        attached_configs(["a=http://x:1", "a=http://x:2"])


def test_parse_cpu_quick_preset_and_overrides(tmp_path):
    head = tmp_path / "head"
    head.mkdir()
    (head / "config.json").write_text(json.dumps({"block_size": 16}))
    args = bench_serving.parse(["--cpu-quick", "--head", str(head)])
    assert (args.model, args.budgets, args.depth, args.concurrency) == ("smollm2", (8, 16), 7, (1, 4, 16))
    assert args.dtype == "bfloat16" and bench_serving.parse(["--cpu-quick", "--head", str(head), "--dtype",
                                                             "float32"]).dtype == "float32"
    assert args.max_running_requests == 16 and args.rate_max_concurrency == 16
    args = bench_serving.parse(["--cpu-quick", "--head", str(head), "--budgets", "12", "--depth", "11",
                                "--server-args", "--attention-backend torch_native"])
    assert (args.budgets, args.depth, args.server_args) == ((12,), 11, ("--attention-backend", "torch_native"))
    assert bench_serving.parse(["--model", "m", "--head", str(head)]).depth == 15  # the head's block_size - 1
    assert args.draft_vocabs == ()
    args = bench_serving.parse(["--cpu-quick", "--head", str(head), "--draft-vocabs", "full", "8192"])
    assert args.draft_vocabs == ("full", "8192")


@pytest.mark.parametrize("argv, message", [
    (["--model", "m"], "--head"),
    (["--cpu-quick", "--head", "h", "--groups", "gsm8k+nope"], "unknown datasets"),
    (["--budgets", "--no-chain"], "--model is required"),
    (["--cpu-quick", "--head", "h", "--concurrency", "--request-rates"], "nothing to run"),
])
def test_parse_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench_serving.parse(argv)
    assert message in capsys.readouterr().err


def test_bench_argv_is_greedy_eos_honoured_and_prerendered():
    argv = bench_argv("http://127.0.0.1:1", Point(CONCURRENCY, 4, math.inf, 8), "p.json", 64, 42, 1, "o.jsonl", "tok")
    joined = " ".join(argv)
    for flag in ("--disable-ignore-eos", "--temperature 0", "--output-details", "--flush-cache",
                 "--request-rate inf", "--max-concurrency 4", "--num-prompts 8", "--sharegpt-output-len 64",
                 "--dataset-name sharegpt", "--tokenizer tok"):
        assert flag in joined
    assert "--apply-chat-template" not in argv  # it would strip SmolLM2's bos string <|im_start|> from every turn
    rate = bench_argv("http://x:1", Point(RATE, None, 0.5, 8), "p.json", 64, 42, 0, "o.jsonl")
    assert "--max-concurrency" not in rate and rate[rate.index("--request-rate") + 1] == "0.5"


# ---------------------------------------------------------------- prompt order


def _write_conversations(path: Path, n: int) -> list[str]:
    ids = [f"p{i}" for i in range(n)]
    path.write_text(json.dumps([{"id": i, "conversations": [{"from": "human", "value": f"prompt {i} " * (k + 2)},
                                                             {"from": "gpt", "value": "ref"}]}
                                for k, i in enumerate(ids)]))
    return ids


def test_prompt_order_is_a_prefix_of_one_permutation(tmp_path):
    path = tmp_path / "p.json"
    ids = _write_conversations(path, 20)
    full = prompt_order(path, 42, 20)
    assert sorted(full) == sorted(ids) and full != ids
    assert prompt_order(path, 42, 7) == full[:7]
    assert prompt_order(path, 43, 20) != full


@pytest.mark.sglang
def test_prompt_order_matches_sglang_loader(tmp_path):
    """bench_serving's ShareGPT loader (seeded like run_benchmark does) sends the prompts in prompt_order's order."""
    from sglang.benchmark.datasets.sharegpt import sample_sharegpt_requests

    class WordTokenizer:
        bos_token = None

        def encode(self, text):
            return text.split()

    path = tmp_path / "p.json"
    _write_conversations(path, 20)
    texts = {c["id"]: c["conversations"][0]["value"] for c in json.loads(path.read_text())}
    random.seed(42)
    rows = sample_sharegpt_requests(str(path), 9, WordTokenizer(), fixed_output_len=16)
    assert [r.prompt for r in rows] == [texts[i] for i in prompt_order(path, 42, 9)]


# ---------------------------------------------------------------- records


def raw_result(texts, errors=None, throughput=100.0, accept=None, lens=None):
    n = len(texts)
    return {"duration": 2.0, "completed": n - sum(map(bool, errors or [])), "total_output_tokens": 200,
            "total_output_tokens_retokenized": 190, "request_throughput": n / 2, "output_throughput": throughput,
            "accept_length": accept, "median_ttft_ms": 10.0, "p99_ttft_ms": 20.0, "median_tpot_ms": 5.0,
            "p99_tpot_ms": 9.0, "median_itl_ms": 5.0, "p99_itl_ms": 8.0, "median_e2e_latency_ms": 300.0,
            "p99_e2e_latency_ms": 400.0, "input_lens": lens or [11, 12, 13, 14][:n], "output_lens": [50] * n,
            "ttfts": [0.01] * n, "generated_texts": list(texts), "errors": errors or [""] * n,
            "server_info": {"speculative_algorithm": None if accept is None else "JETSPEC", "other": 1}}


def record(config, point, texts, group="g", **kw):
    kind = "plain" if config == PLAIN else "tree"
    p = Point(CONCURRENCY, int(point[1:]), math.inf, len(texts)) if point[0] == "c" else \
        Point(RATE, 4, float(point[1:]), len(texts))
    return make_record(raw_result(texts, **kw), group, ServerConfig(config, kind, budget=16).as_dict(), p,
                       IDS[: len(texts)])


def test_make_record_fields():
    r = record("jetspec-b16", "c4", TEXTS, accept=2.5, errors=["", "boom", "", ""])
    assert (r["config"], r["kind"], r["point"], r["max_concurrency"], r["request_rate"]) == \
        ("jetspec-b16", "tree", "c4", 4, None)
    assert r["prompt_ids"] == IDS and r["failed"] == 1 and r["accept_length"] == 2.5
    assert r["output_throughput_retokenized"] == 95.0 and r["retokenized_ratio"] == 0.95
    assert r["server_info"] == {"speculative_algorithm": "JETSPEC"}
    assert record(PLAIN, "r0.5", TEXTS)["request_rate"] == 0.5
    with pytest.raises(RunError, match="3 outputs for 4 prompts"):
        make_record(raw_result(TEXTS[:3]), "g", ServerConfig("x", "tree").as_dict(),
                    Point(CONCURRENCY, 1, math.inf, 4), IDS)


def test_check_prompt_lens():
    r = record(PLAIN, "c1", TEXTS)
    check_prompt_lens(r, dict(zip(IDS, [11, 12, 13, 14])))
    with pytest.raises(RunError, match="prompt order"):
        check_prompt_lens(r, dict(zip(IDS, [11, 13, 12, 14])))


# ---------------------------------------------------------------- parity


def test_first_difference():
    assert first_difference("abcd", "abXd") == 2
    assert first_difference("abc", "abcdef") == 3
    assert first_difference("same", "same") == 4


def test_parity_identical_mismatch_and_failed_requests():
    changed = list(TEXTS)
    changed[2] = "x = 3"
    records = [record(PLAIN, "c1", TEXTS), record(PLAIN, "c4", TEXTS),
               record("jetspec-b16", "c1", TEXTS),
               record("jetspec-b16", "c4", changed),
               record("jetspec-b8", "c4", changed, errors=["", "", "timeout", ""])]  # the differing one failed
    entries = parity(records)
    assert [(e["config"], e["point"], e["reference"], e["compared"], e["mismatches"]) for e in entries] == [
        ("jetspec-b16", "c1", "plain@c1", 4, 0), ("jetspec-b16", "c4", "plain@c4", 4, 1),
        ("jetspec-b8", "c4", "plain@c4", 3, 0)]
    first = entries[1]["first"]
    assert (first["prompt_id"], first["char"], first["plain"], first["got"]) == ("HumanEval/3", 4, "x = 2", "x = 3")
    assert parity_failures(entries) == [entries[1]]
    assert [e["mismatches"] for e in plain_consistency(records)] == [0]


def test_parity_reference_fallback_and_missing_plain():
    records = [record(PLAIN, "c1", TEXTS), record("jetspec-b16", "r2", TEXTS), record("x", "c1", TEXTS, group="h")]
    entries = parity(records)
    assert entries[0]["reference"] == "plain@c1" and entries[0]["mismatches"] == 0  # no plain at r2: plain@c1
    assert entries[1]["reference"] is None and parity_failures(entries) == [entries[1]]  # group h has no plain


def test_compare_outputs_uses_prompt_ids_not_positions():
    plain = record(PLAIN, "c1", TEXTS)
    spec = record("jetspec-b16", "c4", TEXTS[:2])  # a shorter run: its prompts are a prefix of the same order
    assert compare_outputs(plain, spec)["compared"] == 2


def test_exit_code():
    ok = {"parity": [{"mismatches": 0, "reference": "plain@c1"}], "failures": [], "records": [{"failed": 0}]}
    bad = dict(ok, parity=[{"mismatches": 2, "reference": "plain@c1"}])
    assert bench_serving.exit_code(ok, False) == 0
    assert bench_serving.exit_code(bad, False) == 1 and bench_serving.exit_code(bad, True) == 0
    assert bench_serving.exit_code(bad, False, exact=False) == 0  # bf16: reported, not failed
    assert bench_serving.exit_code(dict(ok, failures=[{"config": "x", "error": "e"}]), False) == 3
    assert bench_serving.exit_code(dict(ok, records=[{"failed": 1}]), True) == 3


# ---------------------------------------------------------------- ratios, markdown, plots


def test_ratios_markdown_and_plots(tmp_path):
    records = [record(PLAIN, "c1", TEXTS, throughput=20.0), record(PLAIN, "c4", TEXTS, throughput=60.0),
               record("jetspec-b16", "c1", TEXTS, throughput=30.0, accept=2.5),
               record("jetspec-b16", "c4", TEXTS, throughput=45.0, accept=2.0),
               record(PLAIN, "r1", TEXTS, throughput=10.0), record("jetspec-b16", "r1", TEXTS, throughput=10.0),
               record("jetspec-b16", "r2", TEXTS, throughput=12.0)]
    add_ratios(records)
    assert [r["x_plain"] for r in records] == [1.0, 1.0, 1.5, 0.75, 1.0, 1.0, None]
    entries = parity(records)
    text = markdown(records, entries, plain_consistency(records),
                    [{"config": "chain-l7", "error": "server: exited 1\nlog"}], {"model": "m", "wall_s": 3})
    assert "Greedy parity with plain decoding: ok (0 mismatching prompts)" in text
    assert "| jetspec-b16 | 30.0 (1.50×) | 45.0 (0.75×) | 10.0 (1.00×) | 12.0 (–) |" in text
    assert "### g: max concurrency" in text and "### g: Poisson request rate (req/s)" in text
    row = "| c1 | jetspec-b16 | 4/4 | 30.0 | 1.50× | 95.0 | 2.00 | 10 / 20 | 5 / 9 | 5 / 8 | 300 / 400 | 2.50 |"
    assert row in text
    assert "- chain-l7: server: exited 1" in text
    written = plot(records, tmp_path)
    assert [p.name for p in written] == ["throughput_vs_concurrency.png", "latency_vs_rate.png"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_repeats_median_instance_ratios_and_parity_per_instance():
    def rep(config, point, tput, k, texts=TEXTS, accept=None):
        r = record(config, point, texts, throughput=tput, accept=accept)
        r["repeat"] = k
        return r

    changed = list(TEXTS)
    changed[1] = "different"
    records = [rep(PLAIN, "c1", 30.0, 0), rep("jetspec-b16", "c1", 45.0, 0, accept=2.0),
               rep(PLAIN, "c1", 36.0, 1), rep("jetspec-b16", "c1", 40.0, 1, accept=2.1),
               rep(PLAIN, "c1", 33.0, 2), rep("jetspec-b16", "c1", 60.0, 2, changed, accept=2.2)]
    add_ratios(records)
    assert [round(r["x_plain"], 3) for r in records[1::2]] == [1.5, round(40 / 36, 3), round(60 / 33, 3)]
    checks = parity(records)  # each instance against plain's instance of the same repeat
    assert [(e["reference"], e["mismatches"]) for e in checks] == [("plain@c1", 0)] * 2 + [("plain@c1", 1)]
    combined = combine_repeats(records)
    assert len(combined) == 2 and all("repeat" not in r for r in combined)
    plain, spec = combined
    assert plain["output_throughput"] == 33.0 and spec["output_throughput"] == 45.0
    assert spec["repeats"] == {"output_throughput": [45.0, 40.0, 60.0], "accept_length": [2.0, 2.1, 2.2]}
    assert spec["accept_length"] == 2.0  # the median instance's own figures
    add_ratios(combined)
    assert spec["x_plain"] == pytest.approx(45 / 33)
    even = combine_repeats(records[:4])  # two instances: median 42.5, the lower instance's details
    assert even[1]["output_throughput"] == 42.5 and even[1]["accept_length"] == 2.1
    single = [record(PLAIN, "c1", TEXTS)]
    assert combine_repeats(single) == single
    text = markdown(combined, checks, [], [], {"model": "m"})
    assert "| jetspec-b16 | 45.0 (1.36×) [40.0-60.0] |" in text
    assert "| jetspec-b16 | c1 | 45.0 | 40.0 | 60.0 | 45.0 | 44% | 1.36× |" in text


def test_repeats_flag():
    head = "jetspec_sglang/heads/smollm2-135m-instruct"
    assert bench_serving.parse(["--cpu-quick", "--head", head]).repeats == 1
    assert bench_serving.parse(["--cpu-quick", "--head", head, "--repeats", "3"]).repeats == 3
    for bad in (["--repeats", "0"], ["--repeats", "2", "--attach", "plain=http://127.0.0.1:1"]):
        with pytest.raises(SystemExit):
            bench_serving.parse(["--cpu-quick", "--head", head] + bad)


# ---------------------------------------------------------------- a real tiny sweep


def _tiny_head(path):
    """An untrained 1-layer head for the tiny Qwen3 (block 8, taps 0 and 2), saved at `path`."""
    from transformers import AutoConfig, AutoTokenizer

    from jetspec_sglang.draft_head import init_draft_head, save_draft_head
    from jetspec_sglang.draft_head_config import make_draft_head_config
    from jetspec_sglang.models import prepare_model

    folder = prepare_model("tiny-qwen3")
    tok = AutoTokenizer.from_pretrained(folder)
    config = make_draft_head_config(AutoConfig.from_pretrained(folder), mask_token_id=tok.mask_token_id,
                                    num_layers=1, block_size=8, target_layer_ids=[0, 2])
    save_draft_head(init_draft_head(config), path)


@pytest.mark.server
def test_tiny_sweep_end_to_end(tmp_path):
    """plain, a fixed JETSPEC budget and auto on the tiny Qwen3, concurrency 1 and 2: files written, outputs
    identical, the auto server's budget choices in the records and the report."""
    _tiny_head(tmp_path / "head")
    out = tmp_path / "out"
    code = bench_serving.main(["--model", "tiny-qwen3", "--head", str(tmp_path / "head"), "--budgets", "8",
                               "--no-chain", "--concurrency", "1", "2", "--request-rates", "--groups",
                               "gsm8k+humaneval", "--prompts-per-dataset", "2", "--output-len", "16",
                               "--min-prompts", "4", "--waves", "1", "--run-timeout", "300",
                               "--start-timeout", "300", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert results["failures"] == [], results["failures"]
    assert code == 0
    assert (out / "results.md").is_file() and (out / "throughput_vs_concurrency.png").stat().st_size > 1000
    records = {(r["config"], r["point"]): r for r in results["records"]}
    assert set(records) == {(c, p) for c in ("plain", "jetspec-b8", "auto-b8") for p in ("c1", "c2")}
    assert all(r["completed"] == 4 and r["failed"] == 0 for r in records.values())
    assert records[("jetspec-b8", "c1")]["accept_length"] >= 1.0  # read by bench_serving from /server_info
    assert records[("jetspec-b8", "c1")]["server_info"]["speculative_algorithm"] == "JETSPEC"
    assert records[("jetspec-b8", "c1")]["budget_state"]["policy"] == "fixed"
    auto = records[("auto-b8", "c2")]
    assert auto["budget_state"]["policy"] == "auto" and sum(auto["budget_chosen"].values()) > 0
    assert "budgets chosen by auto" in (out / "results.md").read_text()
    assert [(e["compared"], e["mismatches"]) for e in results["parity"]] == [(4, 0)] * 4


@pytest.mark.server
def test_tiny_sweep_with_repeats(tmp_path):
    """--repeats 2: every config started twice in turn, a record per instance with its repeat, the combined
    records (median and every instance) in results.json and the per-instance table in the report."""
    _tiny_head(tmp_path / "head")
    out = tmp_path / "out"
    code = bench_serving.main(["--model", "tiny-qwen3", "--head", str(tmp_path / "head"), "--budgets", "8",
                               "--no-chain", "--no-auto", "--concurrency", "1", "--request-rates", "--groups",
                               "gsm8k+humaneval", "--prompts-per-dataset", "2", "--output-len", "16",
                               "--min-prompts", "4", "--waves", "1", "--repeats", "2", "--run-timeout", "300",
                               "--start-timeout", "300", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert results["failures"] == [] and code == 0
    assert sorted((r["config"], r["repeat"]) for r in results["records"]) == [
        ("jetspec-b8", 0), ("jetspec-b8", 1), ("plain", 0), ("plain", 1)]
    assert sorted(p.name for p in (out / "logs").glob("server_*.log")) == [
        "server_jetspec-b8_r1.log", "server_jetspec-b8_r2.log", "server_plain_r1.log", "server_plain_r2.log"]
    assert [e["mismatches"] for e in results["parity"]] == [0, 0]
    combined = {r["config"]: r for r in results["combined"]}
    spec = combined["jetspec-b8"]
    assert len(spec["repeats"]["output_throughput"]) == 2 and spec["x_plain"] > 0
    assert sorted(spec["repeats"]["output_throughput"])[0] <= spec["output_throughput"]
    assert "every server instance" in (out / "results.md").read_text()
