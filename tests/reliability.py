"""Shared set-up for the reliability tests: damaged JetSpec heads, many bad server launches from one set of imports,
and bench/soak.py as a module (with the live-server probes of bench/live_server.py: KV in use, streaming clients
that drop, POSTs that return 4xx/5xx instead of raising).

Bad launches: importing sglang costs ~10 s of CPU per process, so `launch_many` starts one "zygote" process that
imports `sglang.launch_server` once and forks a child per case; the child sets the case's environment and argv and
runs the module exactly as `python -m sglang.launch_server` does (runpy, run_name="__main__"; an uncaught
exception prints its traceback and exits 1), with its output in a file. `launch_one` runs the real
`python -m sglang.launch_server` command for comparison. No sglang import in the pytest process.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

ROOT = pathlib.Path(__file__).resolve().parents[1]
JETSPEC_VARS = ("JETSPEC_BUDGET", "JETSPEC_DEPTH", "JETSPEC_TREE_WIDTH", "JETSPEC_TREE_ALGO", "JETSPEC_TOP2GAP_BETA",
                "JETSPEC_TOP2GAP_GAP0", "JETSPEC_OPS_BACKEND", "JETSPEC_BUDGET_LADDER")
BASE_ENV = {"SGLANG_USE_CPU_ENGINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def load_soak():
    """bench/soak.py as a module (bench/ is not a package); it re-exports bench/live_server.py's probes."""
    spec = importlib.util.spec_from_file_location("jetspec_bench_soak", ROOT / "bench" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- heads


def tiny_target_config(**changes):
    """HF config of the tiny Qwen3 target, optionally with fields changed (a head for "another target")."""
    from transformers import AutoConfig

    from jetspec_sglang.models import prepare_model

    config = AutoConfig.from_pretrained(prepare_model("tiny-qwen3"))
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def save_head(path, target_config=None, *, block_size: int = 8, target_layer_ids=None,
              causal_head: bool = True) -> pathlib.Path:
    """A random one-layer JetSpec head (official layout) for `target_config` (default: tiny-qwen3) at `path`."""
    from jetspec_sglang.draft_head import init_draft_head, save_draft_head
    from jetspec_sglang.draft_head_config import make_draft_head_config

    config = make_draft_head_config(target_config or tiny_target_config(), mask_token_id=3, num_layers=1,
                                    block_size=block_size, target_layer_ids=target_layer_ids,
                                    causal_head=causal_head)
    save_draft_head(init_draft_head(config), path)
    return pathlib.Path(path)


def bad_heads(root: pathlib.Path, good: pathlib.Path) -> dict[str, pathlib.Path]:
    """Damaged copies of the tiny head `good`, one folder per defect, under `root`."""
    from safetensors.torch import load_file, save_file

    heads = {}

    def copy(name: str) -> pathlib.Path:
        heads[name] = root / name
        shutil.copytree(good, heads[name])
        return heads[name]

    (copy("no_config") / "config.json").unlink()
    weights = copy("truncated") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    weights = copy("wrong_keys") / "model.safetensors"
    tensors = load_file(str(weights))
    save_file({k.replace("mlp.gate_proj", "mlp.gate"): v for k, v in tensors.items()}, str(weights))
    (copy("bad_json") / "config.json").write_text('{"architectures": ["DFlashDraftModel"], ')
    (copy("no_weights") / "model.safetensors").unlink()
    # Heads for other targets (the tiny target has hidden 128, vocab 2048, 4 layers).
    heads["other_hidden"] = save_head(root / "other_hidden", tiny_target_config(hidden_size=64, head_dim=16))
    heads["other_vocab"] = save_head(root / "other_vocab", tiny_target_config(vocab_size=4096))
    deep = save_head(root / "other_layers", tiny_target_config(num_hidden_layers=12), target_layer_ids=[1, 9])
    config = json.loads((deep / "config.json").read_text())
    config.pop("num_target_layers")  # only the layer ids betray the 12-layer target
    (deep / "config.json").write_text(json.dumps(config))
    heads["other_layers"] = deep
    return heads


# ---------------------------------------------------------------- bad launches


@dataclass
class LaunchCase:
    name: str
    args: list[str]  # appended to the base command
    env: dict[str, str] = field(default_factory=dict)  # JETSPEC_* and friends for this case only


@dataclass
class LaunchResult:
    name: str
    returncode: int | None  # None: still running at the timeout (killed)
    seconds: float
    output: str  # stdout + stderr


def base_args(model: str, head: str | None, port: int) -> list[str]:
    args = ["--model-path", model, "--device", "cpu", "--host", "127.0.0.1", "--port", str(port),
            "--skip-server-warmup", "--dtype", "float32", "--max-total-tokens", "4096", "--mem-fraction-static", "0.05"]
    if head is not None:
        args += ["--speculative-algorithm", "JETSPEC", "--speculative-draft-model-path", head]
    return args


def _case_env(case: LaunchCase) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in JETSPEC_VARS}
    return dict(env, **BASE_ENV, **case.env)


def launch_one(case: LaunchCase, log: pathlib.Path, timeout: float) -> LaunchResult:
    """`python -m sglang.launch_server ARGS` in a fresh interpreter; killed (returncode None) after `timeout`."""
    start = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sglang.launch_server", *case.args], stdout=out,
                                stderr=subprocess.STDOUT, env=_case_env(case), start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    return LaunchResult(case.name, code, time.time() - start, log.read_text(errors="replace"))


def launch_many(cases: list[LaunchCase], workdir: pathlib.Path, timeout: float) -> dict[str, LaunchResult]:
    """Every case as a forked child of one zygote that imported sglang once; name -> result."""
    workdir.mkdir(parents=True, exist_ok=True)
    plan = workdir / "cases.json"
    plan.write_text(json.dumps({"timeout": timeout, "cases": [asdict(c) for c in cases]}))
    env = dict({k: v for k, v in os.environ.items() if k not in JETSPEC_VARS}, **BASE_ENV)
    budget = 120 + len(cases) * (timeout + 5)
    run = subprocess.run([sys.executable, __file__, str(plan), str(workdir)], env=env, capture_output=True,
                         text=True, timeout=budget)
    assert run.returncode == 0, f"zygote failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    raw = json.loads((workdir / "results.json").read_text())
    return {r["name"]: LaunchResult(**r) for r in raw}


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _zygote(plan_path: str, workdir: str) -> None:
    """Import sglang's launcher once, then run each case in a forked child (setsid, output to a file)."""
    import runpy
    import traceback

    _die_with_parent()
    import sglang.launch_server  # noqa: F401  (the expensive imports, shared by every child)

    plan = json.loads(pathlib.Path(plan_path).read_text())
    results = []
    for raw in plan["cases"]:
        case = LaunchCase(**raw)
        log = pathlib.Path(workdir) / f"{case.name}.log"
        start = time.time()
        pid = os.fork()
        if pid == 0:  # child: become `python -m sglang.launch_server ARGS`
            code = 1
            try:
                os.setsid()
                _die_with_parent()
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.environ.clear()
                os.environ.update(_case_env(case))
                sys.argv = [sys.executable, *case.args]
                sys.modules.pop("sglang.launch_server", None)  # executed afresh as __main__; its imports are cached
                runpy.run_module("sglang.launch_server", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # what the interpreter does with an uncaught exception
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        code = None
        while time.time() - start < plan["timeout"]:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                break
            time.sleep(0.2)
        if code is None:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        results.append(asdict(LaunchResult(case.name, code, time.time() - start,
                                           log.read_text(errors="replace"))))
    (pathlib.Path(workdir) / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    _zygote(sys.argv[1], sys.argv[2])
