"""Shared fixtures: the seed, the markers that skip cleanly, and the single tolerance table."""
import importlib.util
import os

import pytest
import torch

# One tolerance table for float comparisons (integers always compare exactly).
TOLERANCES = {
    torch.float64: dict(rtol=1e-9, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
}


def tol(dtype: torch.dtype) -> dict:
    return TOLERANCES[dtype]


@pytest.fixture
def seed() -> int:
    torch.manual_seed(0)
    return 0


def _has_sglang() -> bool:
    return importlib.util.find_spec("sglang") is not None


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="no CUDA device")
    skip_sglang = pytest.mark.skip(reason="sglang is not installed (run scripts/setup.sh)")
    run_slow = os.environ.get("JETSPEC_RUN_SLOW") == "1"
    skip_slow = pytest.mark.skip(reason="slow/server test: set JETSPEC_RUN_SLOW=1 (.ci/run does)")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if ("sglang" in item.keywords or "server" in item.keywords) and not _has_sglang():
            item.add_marker(skip_sglang)
        if ("slow" in item.keywords or "server" in item.keywords) and not run_slow:
            item.add_marker(skip_slow)


# The machine has 2 shared cores: one intra-op thread keeps small-model unit tests fast and stable
# (server tests run in subprocesses and are unaffected).
torch.set_num_threads(1)


# --- JETSPEC registration against the real SGLang (marker `sglang`) -----------------------------------------------
@pytest.fixture
def no_jetspec_env(monkeypatch):
    """Tests set exactly the JETSPEC_* settings they mean; none leak in from the caller's shell. Modules that need
    it for every test use `pytestmark = [..., pytest.mark.usefixtures("no_jetspec_env")]`."""
    from jetspec_sglang.config import ENV_VARS

    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def algo():
    """The registered JETSPEC SpeculativeAlgorithm (register() is idempotent)."""
    from jetspec_sglang import glue
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    glue.register()
    return SpeculativeAlgorithm.from_string("JETSPEC")


# --- real SGLang servers (marker `server`) ------------------------------------------------------------------------
import pathlib  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHIPPED_HEAD = REPO / "jetspec_sglang" / "heads" / "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    from jetspec_sglang.models import prepare_model

    return str(prepare_model("smollm2"))


@pytest.fixture(scope="session")
def smollm2_head() -> str:
    """The trained head shipped with the package (JETSPEC_TEST_HEAD overrides it for development)."""
    head = os.environ.get("JETSPEC_TEST_HEAD") or str(SHIPPED_HEAD)
    if not (pathlib.Path(head) / "config.json").exists():
        pytest.fail(f"no trained SmolLM2 head at {head}: train it (README, 'Training') or set JETSPEC_TEST_HEAD")
    return head


@pytest.fixture(scope="session")
def chat_prompts(smollm2_dir) -> list[list[int]]:
    """Two GSM8K and two HumanEval evaluation prompts, chat-rendered: the short live-server checks' requests."""
    from sglang_fixtures import eval_chat_prompts

    return eval_chat_prompts(smollm2_dir, gsm8k=2, humaneval=2)


def _server(spec, log):
    from jetspec_sglang.serving import Server

    server = Server(spec, log).start()
    return server


@pytest.fixture(scope="session")
def plain_server(smollm2_dir, server_logs):
    from jetspec_sglang.serving import ServerSpec

    server = _server(ServerSpec(model=smollm2_dir), server_logs / "plain.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def jetspec_server(smollm2_dir, smollm2_head, server_logs):
    from jetspec_sglang.serving import ServerSpec

    # A fixed budget (JETSPEC_BUDGET=16): tests of this server rely on multi-token steps; auto is tested apart.
    spec = ServerSpec(model=smollm2_dir, head=smollm2_head, budget=16, depth=15, env={"JETSPEC_BUDGET": "16"})
    server = _server(spec, server_logs / "jetspec.log")
    yield server
    server.stop()
