"""Many clients on one index, with crashes: a language server, two MCP servers and a looping
``mose index`` share one workspace's index while files are edited, created, deleted and
renamed, and random clients (the writer-lock holder among them, mid-write) are killed with
SIGKILL and restarted. Afterwards the store equals a fresh index of the files, and in the quiet
period no chunk was embedded twice (every encode call is logged through MOSE_ENCODE_LOG)."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import make_workspace

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
KILLS = 24
HOLDER_KILLS = 4  # of which the process holding the writer lock (mid-write)
DEADLINE_S = 900


class Driver:
    """Keeps one client running (restarting it when it dies) and talking to the index."""

    name = "client"

    def __init__(self, env: dict[str, str], workspace: Path):
        self.env, self.workspace = env, workspace
        self.proc: subprocess.Popen | None = None
        self.stop = threading.Event()
        self.rounds = 0  # completed requests or runs
        self.starts = 0
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._loop, name=self.name, daemon=True)

    def pid(self) -> int | None:
        proc = self.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.proc = self.spawn()
            self.starts += 1
            try:
                self.run(self.proc)
            except (OSError, ValueError, TimeoutError) as err:
                if self.proc.poll() is None and not self.stop.is_set():
                    self.errors.append(f"{self.name}: {err!r}")
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                self.proc.wait()

    def spawn(self) -> subprocess.Popen:
        raise NotImplementedError

    def run(self, proc: subprocess.Popen) -> None:
        raise NotImplementedError


class _Rpc:
    """Request/response bookkeeping over a reader thread."""

    def __init__(self, proc: subprocess.Popen, read_message, answer_request):
        self.proc = proc
        self.responses: dict[int, dict] = {}
        self.cond = threading.Condition()
        self.next_id = 0
        self._read, self._answer = read_message, answer_request
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self) -> None:
        try:
            while True:
                msg = self._read(self.proc.stdout)
                if msg is None:
                    break
                if "method" in msg and "id" in msg:  # a request from the server
                    self._answer(msg)
                elif "id" in msg:
                    with self.cond:
                        self.responses[msg["id"]] = msg
                        self.cond.notify_all()
        except (OSError, ValueError):
            pass
        with self.cond:
            self.cond.notify_all()

    def request_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def wait(self, rid: int, timeout_s: float = 300) -> dict:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while rid not in self.responses:
                if self.proc.poll() is not None:
                    raise OSError("the server exited")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no answer to request {rid}")
                self.cond.wait(min(left, 0.5))
            return self.responses.pop(rid)


class McpDriver(Driver):
    name = "mcp"

    def spawn(self) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "mose_lsp", "mcp", "-w", str(self.workspace), "--threads", "1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=self.env, cwd=str(REPO))

    def run(self, proc: subprocess.Popen) -> None:
        def read(stream):
            line = stream.readline()
            return json.loads(line) if line else None

        def send(msg: dict) -> None:
            proc.stdin.write((json.dumps(msg) + "\n").encode())
            proc.stdin.flush()

        rpc = _Rpc(proc, read, lambda msg: send({"jsonrpc": "2.0", "id": msg["id"],
                                                 "result": {}}))
        rid = rpc.request_id()
        send({"jsonrpc": "2.0", "id": rid, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"}}})
        rpc.wait(rid)
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        queries = ["edit distance between two strings", "split a shell command line",
                   "wrap text to a width", "convert colors between spaces"]
        while not self.stop.is_set():
            rid = rpc.request_id()
            send({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {
                "name": "search", "arguments": {"query": random.choice(queries), "limit": 3}}})
            answer = rpc.wait(rid)
            if answer.get("result", {}).get("isError"):
                self.errors.append(f"mcp tool error: {answer['result']['content']}")
            self.rounds += 1
            self.stop.wait(0.3)


class LspDriver(Driver):
    name = "lsp"

    def spawn(self) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "mose_lsp", "serve", "--threads", "1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=self.env, cwd=str(REPO))

    def run(self, proc: subprocess.Popen) -> None:
        def read(stream):
            length = None
            while True:
                line = stream.readline()
                if not line:
                    return None
                if line in (b"\r\n", b"\n"):
                    break
                key, _, value = line.decode().partition(":")
                if key.lower() == "content-length":
                    length = int(value)
            return json.loads(stream.read(length))

        lock = threading.Lock()

        def send(msg: dict) -> None:
            body = json.dumps(msg).encode()
            with lock:
                proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
                proc.stdin.flush()

        rpc = _Rpc(proc, read, lambda msg: send({"jsonrpc": "2.0", "id": msg["id"],
                                                 "result": None}))
        uri = self.workspace.as_uri()
        rid = rpc.request_id()
        send({"jsonrpc": "2.0", "id": rid, "method": "initialize", "params": {
            "processId": os.getpid(), "rootUri": uri, "capabilities": {},
            "workspaceFolders": [{"uri": uri, "name": self.workspace.name}]}})
        rpc.wait(rid)
        send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
        while not self.stop.is_set():
            rid = rpc.request_id()
            send({"jsonrpc": "2.0", "id": rid, "method": "workspace/executeCommand", "params": {
                "command": "mose.search", "arguments": [{"query": "parse a shell string"}]}})
            answer = rpc.wait(rid)
            if "error" in answer and "ready" not in str(answer["error"]):
                self.errors.append(f"lsp error: {answer['error']}")
            self.rounds += 1
            self.stop.wait(0.5)


class IndexLoop(Driver):
    name = "index"

    def spawn(self) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "mose_lsp", "index", str(self.workspace), "--no-deep",
             "--threads", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self.env, cwd=str(REPO))

    def run(self, proc: subprocess.Popen) -> None:
        _, err = proc.communicate(timeout=600)
        if proc.returncode == 0:
            self.rounds += 1
        elif proc.returncode != -signal.SIGKILL and not self.stop.is_set():
            self.errors.append(f"mose index failed ({proc.returncode}): {err.decode()[-800:]}")
        self.stop.wait(0.2)


class Editor:
    """Random edits, creations, deletions and renames of generated files."""

    def __init__(self, root: Path, seed: int):
        self.root = root / "gen"
        self.root.mkdir()
        self.rng = random.Random(seed)
        self.n = 0

    def _body(self) -> str:
        self.n += 1
        op = self.rng.choice(["+", "-", "*", "//", "%"])
        return (f"def combine_{self.n}(left, right):\n"
                f"    \"\"\"Combine two numbers with {op} (variant {self.n}).\"\"\"\n"
                f"    return left {op} right + {self.n}\n")

    def step(self) -> None:
        files = sorted(self.root.glob("*.py"))
        action = self.rng.choice(["create", "edit", "delete", "rename"] if files else ["create"])
        if action == "create":
            (self.root / f"mod_{self.n}.py").write_text(self._body())
        else:
            target = self.rng.choice(files)
            if action == "edit":
                target.write_text(target.read_text() + "\n\n" + self._body())
            elif action == "delete":
                target.unlink()
            else:
                target.rename(self.root / f"moved_{self.n}_{target.name}")
                self.n += 1


def _chunks(db: Path) -> tuple[set[tuple], dict[tuple, np.ndarray]]:
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT f.path, c.content_hash, c.start_line, c.end_line, c.id FROM chunks c "
            "JOIN files f ON f.id = c.file_id").fetchall()
        index_exit = int(conn.execute("SELECT value FROM meta WHERE key = 'index_exit'")
                         .fetchone()[0])
        vecs = dict(conn.execute("SELECT chunk_id, vector FROM vectors WHERE exit_layer = ?",
                                 (index_exit,)).fetchall())
    finally:
        conn.close()
    keys = {r[:4] for r in rows}
    vectors = {r[:4]: np.frombuffer(vecs[r[4]], dtype="<f4") for r in rows if r[4] in vecs}
    return keys, vectors


def test_many_clients_with_kills_keep_one_correct_index(tmp_path, model_path):
    from mose_lsp.config import Settings
    from mose_lsp.indexer import WorkspaceIndex
    from mose_lsp.model_dir import default_model_path
    from mose_lsp.service.lock import WriterLock
    from mose_lsp.store import default_index_dir

    workspace = make_workspace(tmp_path / "ws").resolve()
    log_path = tmp_path / "encode.log"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "MOSE_ENCODE_LOG": str(log_path)}
    # Every client uses the default index folder under this XDG cache.
    os.environ["XDG_CACHE_HOME"] = env["XDG_CACHE_HOME"]
    try:
        index_dir = default_index_dir(workspace)
    finally:
        os.environ.pop("XDG_CACHE_HOME")
    if model_path.resolve() != default_model_path().resolve():
        pytest.skip("the clients run with the embedded default model, which is not built")
    editor = Editor(workspace, seed=13)
    drivers = [LspDriver(env, workspace), McpDriver(env, workspace), McpDriver(env, workspace),
               IndexLoop(env, workspace)]
    lock = WriterLock(index_dir)
    rng = random.Random(7)
    started = time.monotonic()
    for d in drivers:
        d.thread.start()
    kills = holder_kills = 0
    killed: Counter[str] = Counter()
    try:
        while kills < KILLS:
            assert time.monotonic() - started < DEADLINE_S, "the chaos phase took too long"
            for _ in range(rng.randint(1, 3)):
                editor.step()
            time.sleep(rng.uniform(0.3, 1.0))
            ours = {d.pid(): d for d in drivers if d.pid() is not None}
            victim = None
            if holder_kills < HOLDER_KILLS and kills % 3 == 0:
                wait_until = time.monotonic() + 5
                while victim is None and time.monotonic() < wait_until:
                    owner = lock.owner()
                    if owner is not None and owner.pid in ours:
                        victim = ours[owner.pid]
                        holder_kills += 1
                    else:
                        time.sleep(0.01)
            if victim is None and ours:
                victim = rng.choice(list(ours.values()))
            if victim is None or (pid := victim.pid()) is None:
                continue
            os.kill(pid, signal.SIGKILL)
            kills += 1
            killed[victim.name] += 1
        # Quiet: no more edits or kills; every client catches up at least twice.
        quiet_from = log_path.stat().st_size if log_path.exists() else 0
        marks = [d.rounds for d in drivers]
        deadline = time.monotonic() + DEADLINE_S
        while any(d.rounds < m + 2 for d, m in zip(drivers, marks)):
            assert time.monotonic() < deadline, [(d.name, d.rounds, m) for d, m in
                                                 zip(drivers, marks)]
            time.sleep(0.5)
        while lock.busy():  # the last writer's batch (e.g. the deep pass) ends
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        for d in drivers:
            d.stop.set()
        for d in drivers:
            if (pid := d.pid()) is not None:
                os.kill(pid, signal.SIGKILL)
            d.thread.join(timeout=60)
    errors = [e for d in drivers for e in d.errors]
    assert not errors, errors
    assert kills >= KILLS and holder_kills >= HOLDER_KILLS, (kills, holder_kills)
    assert set(killed) == {"lsp", "mcp", "index"}, killed

    # The store equals a fresh index of the files.
    shared, shared_vectors = _chunks(index_dir / "store.sqlite3")
    fresh_dir = tmp_path / "fresh"
    index = WorkspaceIndex.open(workspace, Settings(index_dir=str(fresh_dir),
                                                    model=str(model_path)))
    try:
        index.scan()
    finally:
        index.close()
    truth, truth_vectors = _chunks(fresh_dir / "store.sqlite3")
    assert shared == truth, (sorted(shared - truth)[:5], sorted(truth - shared)[:5])
    assert shared_vectors.keys() == truth_vectors.keys()
    for key, vec in truth_vectors.items():
        assert np.allclose(shared_vectors[key], vec, atol=1e-3), key

    # No chunk was embedded twice once the edits and kills stopped.
    with open(log_path, "rb") as fh:
        fh.seek(quiet_from)
        lines = [json.loads(line) for line in fh.read().splitlines() if line.strip()]
    for purpose in ("index", "deep"):
        seen = Counter((line["exit"], *item) for line in lines if line["purpose"] == purpose
                       for item in map(tuple, line["items"]))
        twice = [key for key, n in seen.items() if n > 1]
        assert not twice, (purpose, twice[:5])
    print(f"\nmulti-client: {kills} kills ({holder_kills} of the lock holder; {dict(killed)}), "
          f"{sum(d.starts for d in drivers)} client starts, "
          f"{time.monotonic() - started:.0f} s, {len(truth)} chunks, "
          f"{sum(len(line['items']) for line in lines)} chunks encoded in the quiet period")
