"""HTTP probes of a live SGLang server on 127.0.0.1, shared by bench/soak.py and the reliability tests.

JSON or raw-byte POSTs that return (status, body) instead of raising on 4xx/5xx, streaming /generate clients that
can drop the connection mid-stream, the KV/requests-in-use totals of /v1/loads, and the resident memory of the
server's process tree. Standard library only (psutil for the RSS); no proxies, no retries.
"""
from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlparse

def _conn(url: str, timeout: float) -> http.client.HTTPConnection:
    u = urlparse(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)


def post(url: str, path: str, payload, timeout: float = 600.0) -> tuple[int, dict]:
    """POST JSON (or raw bytes); (status, parsed body or {"raw": text})."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    conn = _conn(url, timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        raw = r.read().decode(errors="replace")
        try:
            return r.status, json.loads(raw) if raw else {}
        except ValueError:
            return r.status, {"raw": raw}
    finally:
        conn.close()


def loads(url: str) -> dict:
    """Totals over the /v1/loads ranks: num_used_tokens, num_running_reqs, num_waiting_reqs."""
    conn = _conn(url, 30)
    try:
        conn.request("GET", "/v1/loads")
        body = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    keys = ("num_used_tokens", "num_running_reqs", "num_waiting_reqs")
    return {k: sum(int(load.get(k, 0)) for load in body["loads"]) for k in keys}


def wait_idle(url: str, timeout: float) -> tuple[bool, float, dict]:
    """Poll until no KV is in use and nothing runs or waits; (idle, seconds waited, last loads)."""
    start = time.time()
    while True:
        state = loads(url)
        if not any(state.values()):
            return True, time.time() - start, state
        if time.time() - start > timeout:
            return False, time.time() - start, state
        time.sleep(0.25)


def stream(url: str, payload: dict, stop_after: int | None = None, on_chunk=None,
           timeout: float = 600.0) -> tuple[int, list[dict]]:
    """POST a streaming /generate; read SSE chunks (cumulative outputs). `stop_after` chunks: close the socket
    there (a client that disconnects). `on_chunk(i, chunk)` runs after each chunk."""
    conn = _conn(url, timeout)
    chunks: list[dict] = []
    try:
        conn.request("POST", "/generate", body=json.dumps(dict(payload, stream=True)).encode(),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            return r.status, [{"raw": r.read().decode(errors="replace")}]
        for line in r:
            line = line.strip()
            if not line.startswith(b"data:") or line == b"data: [DONE]":
                continue
            chunks.append(json.loads(line[5:]))
            if on_chunk is not None:
                on_chunk(len(chunks) - 1, chunks[-1])
            if stop_after is not None and len(chunks) >= stop_after:
                break
        return r.status, chunks
    finally:
        if conn.sock is not None:  # close the socket itself: the server sees the client go away
            conn.sock.close()
        conn.close()


def rss_mb(pid: int) -> float:
    """Resident memory of the server process tree (launcher, scheduler, detokenizer), MB."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for proc in [root] + root.children(recursive=True):
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20
