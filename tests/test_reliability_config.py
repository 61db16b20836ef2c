"""Misconfiguration fails at start-up: a real `python -m sglang.launch_server` (tiny Qwen3 target, CPU) with a bad
head, bad flags or bad JETSPEC_* variables exits non-zero before serving, and its output names the flag, file or
variable and the fix. Each case is checked for the exit code and for the message in the output.

Most cases run as forked children of one process that imported sglang once (tests/reliability.py, `launch_many`:
the same module code as `python -m sglang.launch_server`, minus ~10 s of imports per case); one case runs as the
plain command to show the two behave alike. Marked `server` (.ci/run runs them).
"""
import re

import pytest

from jetspec_sglang.serving import free_port
from reliability import LaunchCase, bad_heads, base_args, launch_many, launch_one, save_head

pytestmark = pytest.mark.server

TIMEOUT = 180  # seconds per launch; a case that starts serving instead of failing is killed here
FLAG = "--speculative-draft-model-path"

# name -> (head folder name, extra flags, env, regex the output must match)
CASES = {
    # The head files.
    "missing_head": ("does-not-exist", [], {}, FLAG + r" .*does-not-exist.*(no such folder|cannot read)"),
    "no_config": ("no_config", [], {}, FLAG + r" .*no_config: no config.json there; point it at a JetSpec head"),
    "bad_json": ("bad_json", [], {}, FLAG + r" .*bad_json: config.json is not valid JSON.*re-save the head"),
    "no_weights": ("no_weights", [], {}, FLAG + r" .*no \*.safetensors file; the head's weights are missing"),
    "truncated": ("truncated", [], {}, FLAG + r" .*model.safetensors is corrupt or truncated.*re-download"),
    "wrong_keys": ("wrong_keys", [], {}, FLAG + r" .*missing \['layers.0.mlp.gate_proj.weight'\], unexpected "
                   r"\['layers.0.mlp.gate.weight'\]; re-export the head with the official key names"),
    # A head made for another target.
    "other_hidden": ("other_hidden", [], {}, FLAG + r" .* does not fit --model-path .*hidden_size=64 != target "
                     r"hidden_size=128"),
    "other_vocab": ("other_vocab", [], {}, FLAG + r" .* does not fit --model-path .*vocab_size=4096 != target "
                    r"vocab_size=2048; use the head trained for this target"),
    "other_layers": ("other_layers", [], {}, FLAG + r" .* does not fit --model-path .*target_layer_ids \[1, 9\] has "
                     r"\[9\] outside the target's 4 layers"),
    # Budget N and depth L (the good head has block_size 8: L <= 7).
    "budget_below_depth": ("good", ["--speculative-num-draft-tokens", "4", "--speculative-num-steps", "7"], {},
                           r"--speculative-num-draft-tokens 4 < depth \+ 1 = 8.*raise the budget"),
    "budget_over_1024": ("good", ["--speculative-num-draft-tokens", "2000", "--speculative-num-steps", "7"], {},
                         r"budget=2000 is out of range \[1, 1024\]; fix .*--speculative-num-draft-tokens"),
    # (a causal head may draft past its block with a warning; a bidirectional one may not)
    "depth_over_block": ("bidirectional", ["--speculative-num-draft-tokens", "16", "--speculative-num-steps", "8"], {},
                         r"--speculative-num-steps 8 exceeds the bidirectional head's trained depth .*<= 7"),
    # Flag combinations JETSPEC does not serve.
    "pipeline_parallel": ("good", ["--pp-size", "2"], {}, r"--pp-size 2: .*drop --pp-size"),
    "dp_attention": ("good", ["--enable-dp-attention", "--dp-size", "2", "--tp-size", "2"], {},
                     r"--enable-dp-attention: JETSPEC does not support DP attention; remove the flag"),
    "disaggregation": ("good", ["--disaggregation-mode", "prefill"], {},
                       r"--disaggregation-mode prefill: .*remove it"),
    "hierarchical_cache": ("good", ["--enable-hierarchical-cache"], {},
                           r"--enable-hierarchical-cache: .*remove it"),
    "rejection_sampling": ("good", ["--speculative-use-rejection-sampling"], {},
                           r"--speculative-use-rejection-sampling: .*remove the flag"),
    "adaptive": ("good", ["--speculative-adaptive"], {}, r"--speculative-adaptive: use JETSPEC_BUDGET_LADDER"),
    "eagle_topk_2": ("good", ["--speculative-eagle-topk", "2"], {},
                     r"--speculative-eagle-topk 2: .*JETSPEC_TREE_WIDTH"),
    "draft_window": ("good", ["--speculative-draft-window-size", "64"], {},
                     r"--speculative-draft-window-size: .*remove the flag"),
    "gpu_backend_on_cpu": ("good", ["--attention-backend", "triton"], {},
                           r"--attention-backend triton: on CPU .*use --attention-backend torch_native"),
    # JETSPEC_* variables.
    "width_zero": ("good", [], {"JETSPEC_TREE_WIDTH": "0"},
                   r"width=0 is out of range \[1, 64\]; fix JETSPEC_TREE_WIDTH"),
    "width_not_int": ("good", [], {"JETSPEC_TREE_WIDTH": "wide"}, r"JETSPEC_TREE_WIDTH='wide' is not a valid int"),
    "unknown_algo": ("good", [], {"JETSPEC_TREE_ALGO": "beam"},
                     r"tree_algo='beam' is not supported; set JETSPEC_TREE_ALGO"),
    "ladder_syntax": ("good", [], {"JETSPEC_BUDGET_LADDER": "1:64;4"}, r"JETSPEC_BUDGET_LADDER item '1:64;4' is not "
                      r"'max_requests:budget'"),
    "ladder_order": ("good", [], {"JETSPEC_BUDGET_LADDER": "4:16,1:64"}, r"increasing max_requests and non-increasing "
                     r"budgets; fix JETSPEC_BUDGET_LADDER"),
    "unknown_backend": ("good", [], {"JETSPEC_OPS_BACKEND": "cuda"}, r"backend='cuda' is not supported; set "
                        r"JETSPEC_OPS_BACKEND"),
    "packed_weights_word": ("good", [], {"JETSPEC_CPU_PACKED_WEIGHTS": "yes"},
                            r"JETSPEC_CPU_PACKED_WEIGHTS='yes' is not one of \('auto', 'on', 'off'\); unset it"),
}


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    good = save_head(root / "good")
    return dict(bad_heads(root, good), good=good, root=root,
                bidirectional=save_head(root / "bidirectional", causal_head=False))


@pytest.fixture(scope="module")
def target():
    from jetspec_sglang.models import prepare_model

    return str(prepare_model("tiny-qwen3"))


def case(name, target, heads) -> LaunchCase:
    folder, extra, env, _ = CASES[name]
    head = heads.get(folder, heads["root"] / folder)
    return LaunchCase(name, base_args(target, str(head), port=free_port()) + extra, env)


def check(result, pattern: str) -> None:
    out = result.output
    assert result.returncode is not None, f"{result.name}: still running after {TIMEOUT} s (it started serving?)"
    assert result.returncode != 0, f"{result.name}: exited 0\n{out[-2000:]}"
    assert "fired up and ready to roll" not in out, f"{result.name}: the server started before failing"
    # The reason is the last line of the traceback, printed by the launcher before any process started.
    assert re.search(pattern, out), f"{result.name}: exit {result.returncode}, message not found: {pattern}\n" \
                                    f"{out[-2500:]}"


# SGLang reads the draft config itself (speculative_hook.py:93, its Gemma4 alias detection) before any algorithm
# validates its flags, and fails there with a bare transformers/hub error; these pass once JETSPEC answers that
# step first (an AROUND hook on speculative_hook._resolve_speculative_algorithm_alias returning "JETSPEC").
READ_BY_SGLANG_FIRST = ("missing_head", "no_config", "bad_json")


@pytest.fixture(scope="module")
def results(target, heads, tmp_path_factory):
    return launch_many([case(n, target, heads) for n in CASES], tmp_path_factory.mktemp("launches"), TIMEOUT)


def check_all(results, names) -> None:
    failures = []
    for name in names:
        try:
            check(results[name], CASES[name][3])
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, f"{len(failures)}/{len(names)} cases failed:\n\n" + "\n\n".join(failures)


def test_misconfiguration_fails_at_startup_with_a_clear_message(results):
    check_all(results, [n for n in CASES if n not in READ_BY_SGLANG_FIRST])


def test_unreadable_head_folder_is_reported_with_the_flag(results):
    check_all(results, READ_BY_SGLANG_FIRST)


def last_line(output: str) -> str:
    return [line for line in output.splitlines() if line.strip() and not line.startswith(" ")][-1]


def test_the_real_command_behaves_like_the_forked_launch(results, target, heads, tmp_path):
    """The plain `python -m sglang.launch_server` subprocess: same exit code and message as the zygote's child."""
    result = launch_one(case("truncated", target, heads), tmp_path / "truncated.log", TIMEOUT)
    check(result, CASES["truncated"][3])
    assert result.returncode == results["truncated"].returncode == 1
    assert last_line(result.output) == last_line(results["truncated"].output)
