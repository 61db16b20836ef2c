"""JetSpecConfig validation, the JETSPEC_* environment reader and the load-adaptive budget ladder (config.py)."""
import dataclasses
import math

import pytest

from jetspec_sglang.config import (
    ENV_VARS,
    MAX_BUDGET,
    ConfigError,
    JetSpecConfig,
    config_from_env,
    parse_ladder,
)


def test_defaults_are_valid_and_frozen():
    cfg = JetSpecConfig()
    assert (cfg.budget, cfg.depth, cfg.width, cfg.tree_algo, cfg.backend) == (64, 15, 7, "best_first", "auto")
    assert cfg.budget_ladder == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.budget = 8
    assert issubclass(ConfigError, ValueError)


# (field, bad value, text the message must contain besides the field and the value: the fix)
BAD_FIELDS = [
    ("budget", 0, "JETSPEC_BUDGET"),
    ("budget", MAX_BUDGET + 1, "--speculative-num-draft-tokens"),
    ("budget", True, "JETSPEC_BUDGET"),
    ("budget", 64.0, "JETSPEC_BUDGET"),
    ("budget", "64", "JETSPEC_BUDGET"),
    ("depth", 0, "JETSPEC_DEPTH"),
    ("depth", 65, "--speculative-num-steps"),
    ("width", 0, "JETSPEC_TREE_WIDTH"),
    ("width", 65, "JETSPEC_TREE_WIDTH"),
    ("tree_algo", "crossproduct", "JETSPEC_TREE_ALGO"),
    ("backend", "cuda", "JETSPEC_OPS_BACKEND"),
    ("top2gap_beta", -0.5, "JETSPEC_TOP2GAP_BETA"),
    ("top2gap_beta", math.nan, "JETSPEC_TOP2GAP_BETA"),
    ("top2gap_beta", math.inf, "JETSPEC_TOP2GAP_BETA"),
    ("top2gap_gap0", math.nan, "JETSPEC_TOP2GAP_GAP0"),
    ("draft_topk_dtype", "float16", "JETSPEC_DRAFT_TOPK_DTYPE"),
    ("draft_vocab", "0", "JETSPEC_DRAFT_VOCAB"),
    ("draft_vocab", "half", "JETSPEC_DRAFT_VOCAB"),
    ("draft_vocab", 16384, "JETSPEC_DRAFT_VOCAB"),
]


@pytest.mark.parametrize("field,value,fix", BAD_FIELDS)
def test_bad_field_raises_naming_field_value_and_fix(field, value, fix):
    with pytest.raises(ConfigError) as err:
        JetSpecConfig(**{field: value})
    message = str(err.value)
    assert field in message and fix in message, message
    assert repr(value) in message or str(value) in message, message


def test_replace_validates():
    cfg = JetSpecConfig().replace(budget=128, width=4)
    assert (cfg.budget, cfg.width) == (128, 4)
    with pytest.raises(ConfigError, match="width"):
        cfg.replace(width=0)


def test_edge_values_are_accepted():
    cfg = JetSpecConfig(budget=1, depth=1, width=1, top2gap_beta=0.0, top2gap_gap0=math.inf, tree_algo="top2gap")
    assert cfg.budget_for_batch(5) == 1
    JetSpecConfig(budget=MAX_BUDGET, depth=64, width=64, backend="triton")


# ---------------------------------------------------------------- ladder


def test_budget_for_batch_follows_the_ladder():
    cfg = JetSpecConfig(budget=64, budget_ladder=((1, 64), (4, 16), (16, 1)))
    assert [cfg.budget_for_batch(n) for n in (0, 1, 2, 3, 4, 5, 9, 16, 17, 40)] == [64, 64, 16, 16, 16, 1, 1, 1, 1, 1]
    assert JetSpecConfig(budget=32).budget_for_batch(1000) == 32, "no ladder: the fixed budget"


@pytest.mark.parametrize("ladder,words", [
    (((4, 16), (2, 8)), "increasing max_requests"),
    (((1, 8), (4, 16)), "non-increasing budgets"),
    (((1, 8), (1, 4)), "increasing max_requests"),
    (((1, 128),), "budget=64"),
    (((0, 8),), "max_requests"),
    (((1, 0),), "budget_ladder budget"),
    (((1, 8, 3),), "is not a (max_requests, budget) pair"),
    (([1, 8],), "is not a (max_requests, budget) pair"),
    (((1, 8.0),), "must be an integer"),
])
def test_bad_ladder_raises(ladder, words):
    with pytest.raises(ConfigError) as err:
        JetSpecConfig(budget=64, budget_ladder=ladder)
    assert words in str(err.value) and "JETSPEC_BUDGET_LADDER" in str(err.value), str(err.value)


@pytest.mark.parametrize("text,want", [
    ("", ()),
    ("1:64", ((1, 64),)),
    ("1:64,4:16,16:1", ((1, 64), (4, 16), (16, 1))),
    (" 1:64 , 4:16 ,", ((1, 64), (4, 16))),
])
def test_parse_ladder(text, want):
    assert parse_ladder(text) == want


@pytest.mark.parametrize("text", ["1-64", "a:b", "1:2:3", "1:", ":4", "1.5:8"])
def test_parse_ladder_rejects_malformed_items(text):
    with pytest.raises(ConfigError) as err:
        parse_ladder(text)
    assert "JETSPEC_BUDGET_LADDER" in str(err.value) and repr(text.split(",")[0].strip()) in str(err.value)


# ---------------------------------------------------------------- environment


def test_config_from_env_reads_every_variable():
    env = {
        "JETSPEC_BUDGET": "128", "JETSPEC_DEPTH": " 20 ", "JETSPEC_TREE_WIDTH": "5", "JETSPEC_TREE_ALGO": "top2gap",
        "JETSPEC_TOP2GAP_BETA": "1.5", "JETSPEC_TOP2GAP_GAP0": "-0.25", "JETSPEC_OPS_BACKEND": "torch",
        "JETSPEC_BUDGET_LADDER": "1:128,8:32", "JETSPEC_BUDGET_EXPLORE": "0.05", "JETSPEC_BUDGET_SCHEDULE": "128,1",
        "JETSPEC_DRAFT_TOPK_DTYPE": "model", "JETSPEC_DRAFT_VOCAB": " 16384", "UNRELATED": "x",
    }
    cfg = config_from_env(env)
    assert cfg == JetSpecConfig(budget=128, depth=20, width=5, tree_algo="top2gap", top2gap_beta=1.5,
                                top2gap_gap0=-0.25, backend="torch", budget_ladder=((1, 128), (8, 32)),
                                budget_auto=False, budget_explore=0.05, budget_schedule=(128, 1),
                                draft_topk_dtype="model", draft_vocab="16384")
    assert set(ENV_VARS) == {k for k in env if k.startswith("JETSPEC_")}, "every JETSPEC_* variable is covered"


def test_config_from_env_empty_and_explicit():
    assert config_from_env({}) == JetSpecConfig()
    assert config_from_env({"JETSPEC_BUDGET": "  ", "JETSPEC_DEPTH": ""}) == JetSpecConfig()
    cfg = config_from_env({"JETSPEC_BUDGET": "128", "JETSPEC_DEPTH": "9"}, budget=32, depth=None)
    assert (cfg.budget, cfg.depth) == (32, 9), "explicit fields win; None is ignored"


def test_config_from_env_defaults_to_os_environ(monkeypatch):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("JETSPEC_TREE_WIDTH", "3")
    assert config_from_env().width == 3


@pytest.mark.parametrize("var,raw,words", [
    ("JETSPEC_BUDGET", "abc", "JETSPEC_BUDGET='abc'"),
    ("JETSPEC_BUDGET", "64.0", "JETSPEC_BUDGET='64.0'"),
    ("JETSPEC_DEPTH", "0", "depth=0"),
    ("JETSPEC_TREE_WIDTH", "-1", "width=-1"),
    ("JETSPEC_TOP2GAP_BETA", "fast", "JETSPEC_TOP2GAP_BETA='fast'"),
    ("JETSPEC_TOP2GAP_BETA", "nan", "top2gap_beta=nan"),
    ("JETSPEC_TOP2GAP_GAP0", "nan", "top2gap_gap0=nan"),
    ("JETSPEC_TREE_ALGO", "heap", "tree_algo='heap'"),
    ("JETSPEC_OPS_BACKEND", "cuda", "backend='cuda'"),
    ("JETSPEC_DRAFT_TOPK_DTYPE", "fp8", "JETSPEC_DRAFT_TOPK_DTYPE"),
    ("JETSPEC_DRAFT_VOCAB", "-3", "JETSPEC_DRAFT_VOCAB='-3'"),
    ("JETSPEC_DRAFT_VOCAB", "16k", "JETSPEC_DRAFT_VOCAB='16k'"),
    ("JETSPEC_BUDGET_LADDER", "1:64;4:16", "JETSPEC_BUDGET_LADDER"),
    ("JETSPEC_BUDGET_LADDER", "1:128", "budget=64"),
])
def test_config_from_env_rejects_invalid_values(var, raw, words):
    with pytest.raises(ConfigError) as err:
        config_from_env({var: raw})
    assert words in str(err.value), str(err.value)
