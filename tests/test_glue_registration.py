"""Registration (glue/__init__.py register, algo.py JetSpecAlgo, hooks.py) and server arguments (args.py) against
real SGLang 0.5.23, nothing mocked.

* register() is idempotent; `--speculative-algorithm JETSPEC` resolves to a JetSpecAlgo whose answers are the
  documented ones (shared docs sglang-integration.md section 3), the sizing method reads SGLang's published
  runtime context (`get_context().override_server_args`, SGLang's own test hook); an unsupported SGLang version
  fails with SGLangVersionError.
* In a fresh process (SGLang's CPU engine, SGLang's own `load_plugins()` entry-point path) every hook listed by
  `hooks.applied_hooks` is patched, stale `from X import Y` bindings included; the H1 rewrite works on a real
  ModelConfig; TorchNativeAttnBackend.forward routes TARGET_VERIFY to the tree-mask path and EXTEND to SGLang's
  own prefill; plain ServerArgs still resolve.
* Arguments use SGLang's documented unit-test pattern (section 4): `ServerArgs(...)`, `record_foreign_defaults`
  with the algorithm's callbacks, `resolution_result`; also the full `resolve_once()` pipeline.
"""
import importlib.util
import json
import os
import shutil

import pytest
import torch

if importlib.util.find_spec("sglang") is None:
    pytest.skip("sglang is not installed (run scripts/setup.sh)", allow_module_level=True)

import sglang_fixtures as fx  # noqa: E402

fx.import_interpreted()  # keep SGLang's Triton kernels interpretable for the other test files of this run

import sglang  # noqa: E402
from jetspec_sglang import glue  # noqa: E402
from jetspec_sglang.glue import hooks  # noqa: E402
from jetspec_sglang.glue.algo import JetSpecAlgo  # noqa: E402
from jetspec_sglang.glue.args import DEFAULT_BUDGET, JetSpecArgError  # noqa: E402
from jetspec_sglang.models import prepare_model  # noqa: E402
from sglang.srt.arg_groups.overrides import record_foreign_defaults, resolution_result  # noqa: E402
from sglang.srt.plugins.hook_registry import HookRegistry  # noqa: E402
from sglang.srt.runtime_context import get_context  # noqa: E402
from sglang.srt.server_args import ServerArgs  # noqa: E402
from sglang.srt.speculative import spec_registry  # noqa: E402
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm  # noqa: E402
from sglang.srt.utils import is_cpu  # noqa: E402

pytestmark = [pytest.mark.sglang, pytest.mark.usefixtures("no_jetspec_env")]

HEAD_BLOCK = 4  # the test head predicts L = 3 slots


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    return fx.make_head(tmp_path_factory.mktemp("heads") / "head", block_size=HEAD_BLOCK)


@pytest.fixture(scope="module")
def target():
    return str(prepare_model("tiny-qwen3"))


# ---------------------------------------------------------------- registration and predicates


def our_hooks() -> dict:
    """target -> number of JETSPEC hook entries registered on it."""
    ours = {hooks.rewrite_draft_architecture, hooks.graph_spec_info, hooks.keep_embeds_dtype, hooks.validate_request,
            hooks.resolve_algorithm_alias, hooks.widen_row_headroom, hooks.report_budget}
    from jetspec_sglang.glue.cpu_attention import forward_extend_target_verify

    ours.add(forward_extend_target_verify)
    return {t: sum(h in ours for _, h, _ in entries) for t, entries in HookRegistry._hooks.items() if entries}


def test_register_is_idempotent(algo):
    before = our_hooks()
    glue.register()
    glue.register()
    assert our_hooks() == before
    assert SpeculativeAlgorithm.from_string("JETSPEC") is algo
    assert SpeculativeAlgorithm.from_string("jetspec") is algo  # the CLI spelling is case-insensitive
    assert spec_registry.get_spec("JETSPEC") is algo
    with pytest.raises(ValueError, match="already registered"):  # so register() must not re-register
        SpeculativeAlgorithm.register("JETSPEC")(lambda sa: None)


def test_register_registers_exactly_the_hooks_the_worker_checks(algo):
    registered = {t for t, count in our_hooks().items() if count}
    assert registered == set(hooks.applied_hooks(glue.on_cpu()))
    assert all(count == 1 for count in our_hooks().values() if count)


def test_jetspec_algo_answers(algo):
    assert isinstance(algo, JetSpecAlgo) and algo.name == "JETSPEC"
    assert algo.supports_overlap is True and algo.validate_server_args is not None
    assert algo.is_dflash_family() is True and algo.is_dflash() is False
    assert algo.supports_target_verify_for_draft() is True
    assert algo.need_topk() is False and algo.carries_draft_hidden_states() is False
    assert algo.get_platform_worker_cls() is None
    assert algo.is_speculative() and algo.is_some() and not algo.is_none()
    for name in ("is_eagle", "is_eagle3", "is_standalone", "is_ngram", "is_dspark", "is_uno", "is_frozen_kv_mtp",
                 "supports_mixed_chunk", "supports_ragged_verify", "supports_grammar_overlap"):
        assert getattr(algo, name)() is False, name
    assert algo.supports_prefill_shared_read_done() is True and algo.has_draft_kv() is True


def test_every_speculative_algorithm_method_exists_on_jetspec_algo():
    """Callers dispatch on the enum's interface without isinstance checks: every public method of
    SpeculativeAlgorithm (not only the is_/supports_ ones SGLang's registration checks) must exist."""
    interface = {name for name, value in vars(SpeculativeAlgorithm).items()
                 if not name.startswith("_") and callable(value) and not isinstance(value, classmethod)}
    assert {"is_dflash_family", "create_future_map", "need_topk"} <= interface  # the scan sees instance methods
    assert sorted(interface - set(dir(JetSpecAlgo))) == []


def test_create_future_map_builds_sglangs_future_map(algo):
    from sglang.srt.managers.overlap_utils import FutureMap
    from sglang.srt.mem_cache.memory_pool import ReqToTokenPool

    pool = ReqToTokenPool(4, 32, "cpu", False)
    future_map = algo.create_future_map("cpu", pool)
    assert isinstance(future_map, FutureMap) and future_map.spec_algo is algo


def test_tokens_per_request_for_target_verify(algo):
    """Target: the N tree nodes; draft runner: the L + 1 block, L read from the published spec config."""
    with get_context().override_server_args(speculative_algorithm="JETSPEC", speculative_num_steps=5,
                                            speculative_num_draft_tokens=40):
        assert algo.get_num_tokens_per_req_for_target_verify(40, False) == 40
        assert algo.get_num_tokens_per_req_for_target_verify(40, True) == 6
    with get_context().override_server_args(speculative_algorithm="JETSPEC", speculative_num_steps=15):
        assert algo.get_num_tokens_per_req_for_target_verify(128, True) == 16


def test_keep_embeds_dtype_only_for_the_jetspec_draft_runner(algo):
    """H3 (AFTER ModelRunner._extend_forward_kwargs): the JETSPEC draft runner gets its fp32 block embeddings back
    instead of model_runner.py's bf16 cast; the target runner and other algorithms keep SGLang's kwargs. The runner
    and batch are plain holders of the attributes the hook reads."""
    from types import SimpleNamespace

    embeds = torch.randn(6, 4) / 3
    cast = {"input_embeds": embeds.bfloat16(), "other": 1}
    batch = SimpleNamespace(input_embeds=embeds, replace_embeds=None)

    def runner(is_draft_worker, spec_algorithm):
        return SimpleNamespace(is_draft_worker=is_draft_worker, spec_algorithm=spec_algorithm,
                               model_config=SimpleNamespace(dtype=torch.float32))

    out = hooks.keep_embeds_dtype(dict(cast), runner(True, algo), batch)
    assert out["input_embeds"].dtype == torch.float32 and torch.equal(out["input_embeds"], embeds)
    assert out["other"] == 1
    for other in (runner(False, algo), runner(True, SpeculativeAlgorithm.DFLASH)):
        assert hooks.keep_embeds_dtype(dict(cast), other, batch)["input_embeds"].dtype == torch.bfloat16
    replaced = SimpleNamespace(input_embeds=embeds, replace_embeds=torch.zeros(1))
    assert hooks.keep_embeds_dtype(dict(cast), runner(True, algo), replaced)["input_embeds"].dtype == torch.bfloat16


def test_unsupported_sglang_version_is_refused(monkeypatch):
    monkeypatch.setattr(sglang, "__version__", "0.5.22")
    with pytest.raises(glue.SGLangVersionError, match=r"supports sglang \('0.5.23',\), found sglang==0.5.22; "
                                                       r"install 'sglang==0.5.23'"):
        glue.check_sglang_version()
    monkeypatch.setattr(glue, "_REGISTERED", False)  # a fresh process: register() checks before registering
    with pytest.raises(glue.SGLangVersionError):
        glue.register()
    monkeypatch.setattr(sglang, "__version__", "0.5.23")
    assert glue.check_sglang_version() == "0.5.23"


# ---------------------------------------------------------------- a fresh SGLang process (CPU engine)


@pytest.fixture(scope="module")
def fresh_process(tmp_path_factory):
    """In the child: import a module holding a `from X import Y` copy of a hooked function, then SGLang's own
    plugin loading (entry point -> register() -> apply_hooks)."""
    if os.environ.get(fx.CHILD_ENV) != "1" or not is_cpu():
        pytest.skip("runs in a fresh SGLang CPU process (test_hooks_in_a_fresh_sglang_process)")
    import pkgutil

    import sglang.srt.managers.scheduler as scheduler  # binds validate_dflash_request at import
    from sglang.srt.plugins import load_plugins

    targets = hooks.applied_hooks(on_cpu=True)
    originals = {t: pkgutil.resolve_name(t) for t in targets}
    assert HookRegistry._patched.isdisjoint(targets)
    load_plugins()
    return dict(targets=targets, originals=originals, scheduler=scheduler,
                head=fx.make_head(tmp_path_factory.mktemp("h") / "head", block_size=HEAD_BLOCK))


def test_applied_every_hook(fresh_process):
    import pkgutil

    assert len(fresh_process["targets"]) == 11  # on CPU: H1-H8, H9-H11 (packed weights)
    for target in fresh_process["targets"]:
        assert target in HookRegistry._patched, target
        assert pkgutil.resolve_name(target) is not fresh_process["originals"][target], target
    import sglang.srt.speculative.dflash_utils as dflash_utils

    assert fresh_process["scheduler"].validate_dflash_request is dflash_utils.validate_dflash_request
    from sglang.srt.arg_groups.choices import DRAFT_ATTENTION_BACKEND_CHOICES

    assert "torch_native" in DRAFT_ATTENTION_BACKEND_CHOICES  # R1


def test_applied_draft_architecture_rewrite(fresh_process, target):
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.models.registry import ModelRegistry

    from jetspec_sglang.glue.draft_model import JetSpecDraftModel

    head = str(fresh_process["head"])
    with get_context().override_server_args(device="cpu", speculative_algorithm="JETSPEC"):
        assert ModelConfig(head, is_draft_model=True, speculative_algorithm="JETSPEC").hf_config.architectures == [
            "JetSpecDraftModel"]
        assert ModelRegistry.models["JetSpecDraftModel"] is JetSpecDraftModel
        assert ModelConfig(head, is_draft_model=True, speculative_algorithm="DFLASH").hf_config.architectures == [
            "DFlashDraftModel"]  # other algorithms untouched
        assert ModelConfig(target).hf_config.architectures == ["Qwen3ForCausalLM"]  # the target untouched
        with pytest.raises(ValueError, match="--speculative-draft-model-path: architectures=.*Qwen3ForCausalLM"):
            ModelConfig(target, is_draft_model=True, speculative_algorithm="JETSPEC")


def test_applied_torch_native_forward(fresh_process):
    """Through the patched class, as the model runner calls it (AttentionBackend.forward): TARGET_VERIFY takes the
    tree mask; a plain EXTEND of the same rows still runs SGLang's own causal torch_native prefill."""
    from conftest import tol
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    case = fx.VerifyCase(prefix_lens=[4, 0, 9], n=5, tree=True, seed=3)
    o = case.backend.forward(case.q, case.k, case.v, case.layer, case.forward_batch())
    torch.testing.assert_close(o, case.naive_attention(case.layer), **tol(torch.float32))
    extend = fx.VerifyCase(prefix_lens=[4, 0, 9], n=5, tree=True, seed=3)
    o = extend.backend.forward(extend.q, extend.k, extend.v, extend.layer, extend.forward_batch(ForwardMode.EXTEND))
    torch.testing.assert_close(o, extend.naive_attention(extend.layer, use_tree=False), **tol(torch.float32))
    assert not torch.allclose(o, case.naive_attention(case.layer))  # the tree mask made a difference


def test_applied_packed_linear(fresh_process):
    """Through the patched class, as SGLang's layers call it: a packed bf16 ReplicatedLinear gives F.linear's exact
    output; an unpacked one still runs the original."""
    from sglang.srt.layers.linear import ReplicatedLinear

    from jetspec_sglang.glue import cpu_packed

    packed, plain = (ReplicatedLinear(64, 48, bias=True, params_dtype=torch.bfloat16) for _ in range(2))
    for layer in (packed, plain):
        torch.nn.init.normal_(layer.weight)
        torch.nn.init.normal_(layer.bias)
    assert cpu_packed.pack_model(torch.nn.ModuleList([packed])) == (1, 64 * 48 * 2)
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    for layer in (packed, plain):
        assert torch.equal(layer(x)[0], torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert getattr(plain, cpu_packed.PACKED_ATTR, None) is None


def test_applied_plain_server_args_still_resolve(fresh_process, target):
    args = ServerArgs(model_path=target, device="cpu")
    args.resolve_once()
    assert resolution_result(args, "speculative_algorithm") is None
    assert resolution_result(args, "attention_backend") == "torch_native"
    assert resolution_result(args, "speculative_num_draft_tokens") is None


def test_hooks_in_a_fresh_sglang_process():
    if os.environ.get(fx.CHILD_ENV) == "1":
        pytest.skip("this is the child")
    fx.rerun_in_subprocess(__file__, "test_applied", SGLANG_USE_CPU_ENGINE="1")


# ---------------------------------------------------------------- server arguments


def server_args(target, head, **fields) -> ServerArgs:
    fields.setdefault("speculative_draft_model_path", str(head))
    return ServerArgs(model_path=target, **fields)


def resolved(args, algo, *fields) -> dict:
    """Run validate then handle as speculative_hook does; the declared values of `fields`."""
    record_foreign_defaults(args, "test.validate", algo.validate_server_args)
    record_foreign_defaults(args, "test.handle", algo.handle_server_args)
    return {f: resolution_result(args, f) for f in fields}


SIZES = ("speculative_num_steps", "speculative_num_draft_tokens", "speculative_eagle_topk", "enable_mixed_chunk")
BACKENDS = ("attention_backend", "speculative_draft_attention_backend", "max_running_requests")


def test_defaults_on_cpu(algo, target, head):
    got = resolved(server_args(target, head, device="cpu"), algo, *SIZES, *BACKENDS)
    assert got == dict(speculative_num_steps=HEAD_BLOCK - 1, speculative_num_draft_tokens=DEFAULT_BUDGET,
                       speculative_eagle_topk=1, enable_mixed_chunk=False, attention_backend="torch_native",
                       speculative_draft_attention_backend="torch_native", max_running_requests=16)
    assert DEFAULT_BUDGET == 64


def test_defaults_on_gpu(algo, target, head):
    got = resolved(server_args(target, head, device="cuda"), algo, *BACKENDS)
    assert got == dict(attention_backend="flashinfer", speculative_draft_attention_backend="flashinfer",
                       max_running_requests=32)
    got = resolved(server_args(target, head, device="cuda", attention_backend="triton"), algo, *BACKENDS[:2])
    assert got == dict(attention_backend="triton", speculative_draft_attention_backend="triton")


def test_budget_and_depth_sources(algo, target, head, monkeypatch):
    steps, budget = "speculative_num_steps", "speculative_num_draft_tokens"
    assert resolved(server_args(target, head, device="cpu", speculative_num_draft_tokens=30), algo, budget) == {
        budget: 30}
    monkeypatch.setenv("JETSPEC_BUDGET", "20")
    assert resolved(server_args(target, head, device="cpu"), algo, budget) == {budget: 20}
    assert resolved(server_args(target, head, device="cpu", speculative_num_draft_tokens=30), algo, budget) == {
        budget: 30}  # the flag wins over the variable
    monkeypatch.setenv("JETSPEC_DEPTH", "2")
    assert resolved(server_args(target, head, device="cpu"), algo, steps) == {steps: 2}
    assert resolved(server_args(target, head, device="cpu", speculative_num_steps=1), algo, steps) == {steps: 1}


def test_explicit_max_running_requests_is_kept(algo, target, head):
    args = server_args(target, head, device="cpu", max_running_requests=5)
    assert resolved(args, algo, "max_running_requests") == {"max_running_requests": 5}


def test_block_size_precedence_is_the_official_loaders(algo, target, head, tmp_path):
    """The official loader reads the top-level block_size; dflash_config.block_size counts only when the top level
    has none (SGLang's DFLASH reads it first, dflash_utils.py:609, but JETSPEC sets the block itself). The default
    depth is block - 1 of that choice, and DraftHeadConfig agrees."""
    from jetspec_sglang.draft_head_config import DraftHeadConfig

    moved = tmp_path / "moved"
    shutil.copytree(head, moved)
    raw = json.loads((moved / "config.json").read_text())
    raw["dflash_config"]["block_size"] = raw.pop("block_size") + 2  # only the nested key
    (moved / "config.json").write_text(json.dumps(raw))
    got = resolved(server_args(target, moved, device="cpu"), algo, "speculative_num_steps")
    assert got == {"speculative_num_steps": HEAD_BLOCK + 1}
    assert DraftHeadConfig.from_dict(raw).block_size == HEAD_BLOCK + 2
    raw["block_size"] = 3  # both present: the top level wins, as in the official loader
    (moved / "config.json").write_text(json.dumps(raw))
    assert resolved(server_args(target, moved, device="cpu"), algo, "speculative_num_steps") == {
        "speculative_num_steps": 2}
    assert DraftHeadConfig.from_dict(raw).block_size == 3
    del raw["block_size"], raw["dflash_config"]["block_size"]
    (moved / "config.json").write_text(json.dumps(raw))
    with pytest.raises(JetSpecArgError, match=r"--speculative-draft-model-path .*block_size is missing; set the "
                                              r"top-level block_size"):
        record_foreign_defaults(server_args(target, moved, device="cpu"), "t", algo.validate_server_args)


def test_depth_beyond_the_block(algo, target, head, tmp_path, caplog):
    """The official engine drafts block = depth + 1 whatever block_size: a causal head may go deeper (with a
    warning that those positions are extrapolated); a bidirectional head may not (every row sees every row)."""
    deeper = dict(device="cpu", speculative_num_steps=HEAD_BLOCK + 2, speculative_num_draft_tokens=16)
    with caplog.at_level("WARNING", logger="jetspec_sglang.glue.args"):
        got = resolved(server_args(target, head, **deeper), algo, "speculative_num_steps")
    assert got == {"speculative_num_steps": HEAD_BLOCK + 2}
    assert f"--speculative-num-steps {HEAD_BLOCK + 2} exceeds the head's trained depth block_size-1=" \
           f"{HEAD_BLOCK - 1}: draft positions past {HEAD_BLOCK - 1} are extrapolated" in caplog.text
    bidirectional = fx.make_head(tmp_path / "bidirectional", block_size=HEAD_BLOCK, causal_head=False)
    with pytest.raises(JetSpecArgError, match=rf"--speculative-num-steps {HEAD_BLOCK + 2} exceeds the bidirectional "
                                              rf"head's trained depth.*--speculative-num-steps <= {HEAD_BLOCK - 1}"):
        record_foreign_defaults(server_args(target, bidirectional, **deeper), "t", algo.validate_server_args)
    ok = dict(deeper, speculative_num_steps=HEAD_BLOCK - 1)
    record_foreign_defaults(server_args(target, bidirectional, **ok), "t", algo.validate_server_args)


def test_full_resolution_pipeline(algo, target, head):
    """SGLang's own resolve_once(): validate, then handle, through speculative_hook."""
    args = server_args(target, head, device="cpu", speculative_algorithm="JETSPEC", speculative_num_draft_tokens=12)
    args.resolve_once()
    assert {f: resolution_result(args, f) for f in SIZES + BACKENDS} == dict(
        speculative_num_steps=HEAD_BLOCK - 1, speculative_num_draft_tokens=12, speculative_eagle_topk=1,
        enable_mixed_chunk=False, attention_backend="torch_native", speculative_draft_attention_backend="torch_native",
        max_running_requests=16)
    bad = server_args(target, head, device="cpu", speculative_algorithm="JETSPEC", speculative_eagle_topk=2)
    with pytest.raises(JetSpecArgError, match="--speculative-eagle-topk 2"):
        bad.resolve_once()


def test_plain_server_args_resolve_with_the_plugin_loaded(algo, target):
    args = ServerArgs(model_path=target, device="cpu")
    args.resolve_once()
    assert resolution_result(args, "speculative_algorithm") is None
    assert resolution_result(args, "attention_backend") == "torch_native"


REJECTIONS = {  # name -> (ServerArgs fields, {env var: value}, regex the message must match)
    "missing_draft_path": (dict(speculative_draft_model_path=None), {},
                           r"needs a draft head: add --speculative-draft-model-path DIR"),
    "budget_below_depth": (dict(speculative_num_draft_tokens=3), {},
                           r"--speculative-num-draft-tokens 3 < depth \+ 1 = 4.*raise the budget"),
    "budget_over_limit": (dict(speculative_num_draft_tokens=2000), {},
                          r"budget=2000 is out of range \[1, 1024\].*--speculative-num-draft-tokens"),
    "pipeline_parallel": (dict(pp_size=2), {}, r"--pp-size 2.*drop --pp-size"),
    "dp_attention": (dict(enable_dp_attention=True, dp_size=2, tp_size=2), {},
                     r"--enable-dp-attention.*remove the flag"),
    "disaggregation": (dict(disaggregation_mode="prefill"), {}, r"--disaggregation-mode prefill.*remove it"),
    "hierarchical_cache": (dict(enable_hierarchical_cache=True), {}, r"--enable-hierarchical-cache.*remove it"),
    "rejection_sampling": (dict(speculative_use_rejection_sampling=True), {},
                           r"--speculative-use-rejection-sampling.*remove the flag"),
    "adaptive": (dict(speculative_adaptive=True), {}, r"--speculative-adaptive: use JETSPEC_BUDGET_LADDER"),
    "eagle_topk": (dict(speculative_eagle_topk=2), {}, r"--speculative-eagle-topk 2.*JETSPEC_TREE_WIDTH"),
    "draft_window": (dict(speculative_draft_window_size=8), {}, r"--speculative-draft-window-size.*remove the flag"),
    "fa3_on_gpu": (dict(device="cuda", attention_backend="fa3"), {},
                   r"--attention-backend fa3.*use --attention-backend flashinfer or triton"),
    "trtllm_on_gpu": (dict(device="cuda", attention_backend="trtllm_mha"), {},
                      r"--attention-backend trtllm_mha.*flashinfer or triton"),
    "fa3_draft_on_gpu": (dict(device="cuda", speculative_draft_attention_backend="fa3"), {},
                         r"--speculative-draft-attention-backend fa3: use flashinfer or triton"),
    "gpu_backend_on_cpu": (dict(attention_backend="triton"), {}, r"--attention-backend triton: on CPU.*torch_native"),
    "width_not_int": ({}, {"JETSPEC_TREE_WIDTH": "wide"}, r"JETSPEC_TREE_WIDTH='wide' is not a valid int"),
    "width_zero": ({}, {"JETSPEC_TREE_WIDTH": "0"}, r"width=0 is out of range.*JETSPEC_TREE_WIDTH"),
    "tree_algo": ({}, {"JETSPEC_TREE_ALGO": "beam"}, r"tree_algo='beam' is not supported; set JETSPEC_TREE_ALGO"),
    "ladder_syntax": ({}, {"JETSPEC_BUDGET_LADDER": "1:64,x"}, r"JETSPEC_BUDGET_LADDER item 'x'"),
    "ladder_over_budget": ({}, {"JETSPEC_BUDGET_LADDER": "1:100"}, r"budget_ladder budget=100.*JETSPEC_BUDGET_LADDER"),
    "ladder_order": ({}, {"JETSPEC_BUDGET_LADDER": "4:16,2:8"}, r"increasing max_requests.*JETSPEC_BUDGET_LADDER"),
    "draft_vocab_setting": ({}, {"JETSPEC_DRAFT_VOCAB": "lots"}, r"JETSPEC_DRAFT_VOCAB='lots' is not 'auto'"),
    "draft_vocab_without_file": ({}, {"JETSPEC_DRAFT_VOCAB": "64"},
                                 r"JETSPEC_DRAFT_VOCAB=64 needs draft_vocab.json .*train draft-vocab"),
}


@pytest.mark.parametrize("name", list(REJECTIONS))
def test_validate_rejects(algo, target, head, monkeypatch, name):
    fields, env, message = REJECTIONS[name]
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    args = server_args(target, head, **{"device": "cpu", **fields})
    with pytest.raises(JetSpecArgError, match=message):
        record_foreign_defaults(args, "test.validate", algo.validate_server_args)


def test_validate_rejects_head_folders_that_are_not_jetspec_heads(algo, target, tmp_path):
    with pytest.raises(JetSpecArgError, match=r"--speculative-draft-model-path .*: no config.json there"):
        record_foreign_defaults(server_args(target, tmp_path, device="cpu"), "t", algo.validate_server_args)
    with pytest.raises(JetSpecArgError, match=r"config.json has no dflash_config.*Qwen3ForCausalLM"):
        record_foreign_defaults(server_args(target, target, device="cpu"), "t", algo.validate_server_args)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(JetSpecArgError, match=r"config.json is not valid JSON"):
        record_foreign_defaults(server_args(target, broken, device="cpu"), "t", algo.validate_server_args)


def test_validate_checks_the_heads_draft_vocabulary(algo, target, head, tmp_path, monkeypatch):
    import shutil

    import torch

    from jetspec_sglang.draft_vocab import FILE, DraftVocab, save_draft_vocab
    from jetspec_sglang.glue.args import check_draft_vocab

    copy = tmp_path / "head"
    shutil.copytree(head, copy)
    save_draft_vocab(str(copy), DraftVocab(torch.arange(7), 3, "seven tokens"))
    with pytest.raises(JetSpecArgError, match=r"ranks 7 tokens, the target's vocabulary has \d+.*another target"):
        record_foreign_defaults(server_args(target, copy, device="cpu"), "t", algo.validate_server_args)
    (copy / FILE).write_text("[1, 2")
    with pytest.raises(JetSpecArgError, match=r"draft_vocab.json: unreadable draft vocabulary"):
        record_foreign_defaults(server_args(target, copy, device="cpu"), "t", algo.validate_server_args)
    save_draft_vocab(str(copy), DraftVocab(torch.arange(7), 3, "seven tokens"))
    monkeypatch.setenv("JETSPEC_DRAFT_VOCAB", "2")
    with pytest.raises(JetSpecArgError, match=r"JETSPEC_DRAFT_VOCAB=2: 2 draft tokens < the tree width"):
        check_draft_vocab(str(copy), 7)
    (copy / FILE).write_text("[1, 2")
    monkeypatch.setenv("JETSPEC_DRAFT_VOCAB", "full")  # the file is not read at all
    record_foreign_defaults(server_args(target, copy, device="cpu"), "t", algo.validate_server_args)


def test_validate_accepts_the_supported_combinations(algo, target, head, monkeypatch):
    ok = [dict(device="cpu"), dict(device="cpu", attention_backend="torch_native", speculative_num_steps=2,
                                    speculative_num_draft_tokens=3),
          dict(device="cpu", speculative_num_draft_tokens=1024), dict(device="cuda", attention_backend="flashinfer"),
          dict(device="cuda", attention_backend="triton", speculative_draft_attention_backend="flashinfer"),
          dict(device="cpu", speculative_eagle_topk=1)]
    monkeypatch.setenv("JETSPEC_TREE_WIDTH", "3")
    for fields in ok:
        record_foreign_defaults(server_args(target, head, **fields), "t", algo.validate_server_args)
    monkeypatch.setenv("JETSPEC_BUDGET_LADDER", "1:32,4:8")
    monkeypatch.setenv("JETSPEC_TREE_ALGO", "top2gap")
    record_foreign_defaults(server_args(target, head, device="cpu"), "t", algo.validate_server_args)
