"""A minimal LSP client over a subprocess's pipes, for tests that need to control exactly how
the connection ends (close the input right after a request, send a signal) and to see every
message the server sends. Server requests get an empty answer (``workspace/configuration``:
one null per item)."""

from __future__ import annotations

import itertools
import json
import subprocess
import threading
import time
from typing import Any


class WireClient:
    def __init__(self, argv: list[str], **popen: Any):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, **popen)
        self.responses: dict[int, dict[str, Any]] = {}
        self.notifications: list[dict[str, Any]] = []
        self.server_requests: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    # -- sending

    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        with self._write_lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            self.proc.stdin.flush()

    def notify(self, method: str, params: Any = None) -> None:
        self.send({"method": method, "params": params})

    def request_async(self, method: str, params: Any = None) -> int:
        msg_id = next(self._ids)
        self.send({"id": msg_id, "method": method, "params": params})
        return msg_id

    def response(self, msg_id: int, timeout: float = 60.0) -> dict[str, Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: msg_id in self.responses, timeout):
                raise AssertionError(f"no answer to request {msg_id} in {timeout}s; "
                                     f"stderr: {''.join(self.stderr)[-2000:]}")
            return self.responses.pop(msg_id)

    def request(self, method: str, params: Any = None, timeout: float = 60.0) -> Any:
        answer = self.response(self.request_async(method, params), timeout)
        if "error" in answer:
            raise AssertionError(f"{method} failed: {answer['error']}")
        return answer.get("result")

    def command(self, name: str, *args: Any) -> Any:
        return self.request("workspace/executeCommand", {"command": name, "arguments": list(args)})

    def close_input(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    # -- receiving

    def methods(self) -> set[str]:
        """Every method the server sent (notifications and requests)."""
        with self._cond:
            return {m["method"] for m in self.notifications + self.server_requests}

    def until(self, check: Any, what: str, timeout: float = 120.0, every: float = 0.1) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"timed out waiting for {what} (server exit code "
                                     f"{self.proc.poll()}); stderr: {''.join(self.stderr)[-2000:]}")
            time.sleep(every)

    def _read(self) -> None:
        stream = self.proc.stdout
        assert stream is not None
        while True:
            length = None
            while True:
                line = stream.readline()
                if not line:
                    return
                if not line.strip():
                    if length is not None:
                        break
                    continue
                name, _, value = line.decode().partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            message = json.loads(stream.read(length))
            if "method" in message and "id" in message:
                with self._cond:
                    self.server_requests.append(message)
                result: Any = None
                if message["method"] == "workspace/configuration":
                    result = [None] * len(message["params"]["items"])
                try:
                    self.send({"id": message["id"], "result": result})
                except (OSError, ValueError):
                    pass
            elif "method" in message:
                with self._cond:
                    self.notifications.append(message)
            else:
                with self._cond:
                    self.responses[message["id"]] = message
                    self._cond.notify_all()

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.decode(errors="replace"))
