"""Launch and stop real SGLang server processes on 127.0.0.1 (CPU or GPU), for the demo, benchmarks and tests.

No sglang import: the server is a subprocess (`python -m sglang.launch_server`), reached over HTTP. The CPU
recipe is SGLANG_USE_CPU_ENGINE=1 + --device cpu; JETSPEC adds --speculative-algorithm JETSPEC and the head.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM (and tears down its own children) if the launching process dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the caller's stop() still cleans up
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerSpec:
    model: str  # target folder
    head: str | None = None  # JETSPEC head folder; None = plain decoding
    budget: int | None = None  # --speculative-num-draft-tokens
    depth: int | None = None  # --speculative-num-steps
    device: str = "cpu"
    dtype: str | None = "float32"  # exact comparisons need fp32 on CPU
    max_total_tokens: int = 8192
    max_running_requests: int | None = None
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def command(self, port: int) -> list[str]:
        cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", self.model, "--device", self.device,
               "--host", "127.0.0.1", "--port", str(port), "--max-total-tokens", str(self.max_total_tokens),
               "--skip-server-warmup", "--sleep-on-idle"]  # an idle scheduler otherwise spins a core
        if self.device == "cpu":
            cmd += ["--mem-fraction-static", "0.05"]
        if self.dtype:
            cmd += ["--dtype", self.dtype]
        if self.max_running_requests:
            cmd += ["--max-running-requests", str(self.max_running_requests)]
        if self.head:
            cmd += ["--speculative-algorithm", "JETSPEC", "--speculative-draft-model-path", self.head]
            if self.budget:
                cmd += ["--speculative-num-draft-tokens", str(self.budget)]
            if self.depth:
                cmd += ["--speculative-num-steps", str(self.depth)]
        return cmd + list(self.extra_args)


class Server:
    """A running server; use as a context manager. `log_path` keeps the server's stdout+stderr."""

    def __init__(self, spec: ServerSpec, log_path: str | Path, port: int | None = None, timeout: float = 600):
        self.spec, self.log_path, self.port, self.timeout = spec, Path(log_path), port or free_port(), timeout
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **self.spec.env)
        if self.spec.device == "cpu":
            env["SGLANG_USE_CPU_ENGINE"] = "1"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.spec.command(self.port), stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with code {self.proc.returncode} during start-up; log tail:\n"
                                   f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"server not healthy after {self.timeout} s; log tail:\n{self.log_tail()}")

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout=30)

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        text = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if "server_args=" not in ln]
        return "\n".join(text[-lines:])

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- requests --------------------------------------------------------------------------------------------------
    def post(self, path: str, payload: dict, timeout: float = 600) -> tuple[int, dict]:
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                body = r.read()  # some endpoints (/abort_request) answer 200 with an empty body
                return r.status, (json.loads(body) if body.strip() else {})
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")
            try:
                return e.code, json.loads(body)
            except ValueError:
                return e.code, {"error": body}

    def get(self, path: str, timeout: float = 60) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                body = r.read()
                return r.status, (json.loads(body) if body else {})
        except urllib.error.HTTPError as e:
            return e.code, {"error": e.read().decode(errors="replace")}

    def budget_report(self) -> dict | None:
        """The JETSPEC budget policy's report of this server (`budget_report` of its /get_server_info)."""
        status, info = self.get("/get_server_info")
        return budget_report(info) if status == 200 else None

    def generate(self, text: str | None = None, input_ids: list[int] | None = None, **sampling) -> dict:
        payload = {"sampling_params": sampling}
        if input_ids is not None:
            payload["input_ids"] = input_ids
        else:
            payload["text"] = text
        status, body = self.post("/generate", payload)
        if status != 200:
            raise RuntimeError(f"/generate returned {status}: {body}")
        return body


def budget_report(server_info: dict) -> dict | None:
    """`jetspec_budget` of a /get_server_info answer (glue hook H8): the budget policy, decode steps per budget and,
    for auto, its estimates; cumulative since the server started. None for a plain server."""
    states = server_info.get("internal_states") or [{}]
    return states[0].get("jetspec_budget")
