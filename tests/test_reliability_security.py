"""Nothing reads or sends what it should not.

- The runtime opens no network connection: the whole CLI flow and the stdio server run with
  every IPv4/IPv6 connect and name lookup made to fail (and recorded); AF_UNIX socket pairs,
  which asyncio uses internally, keep working.
- It reads nothing outside the workspace, its index folder, its model and the Python
  installation (``strace`` of the CLI flow, every opened path checked).
- Index folders are 0700 and their files 0600.
- No pickle, no eval/exec in the runtime; every ``torch.load`` in training/ and export/ passes
  ``weights_only=True``.
- Secret files are never read: a planted secret value never reaches the index files.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from conftest import make_workspace

import mose_lsp
from mose_lsp.config import Settings
from mose_lsp.indexer import WorkspaceIndex

REPO = Path(__file__).resolve().parents[1]
SECRET = "mose-planted-secret-7f3a9c2e51"

NO_NETWORK = textwrap.dedent('''
    """Test harness: any IPv4/IPv6 connect or name lookup fails and is recorded."""
    import os, socket

    _LOG = os.environ.get("MOSE_NET_LOG")

    def _refuse(what):
        if _LOG:
            with open(_LOG, "a") as fh:
                fh.write(what + "\\n")
        raise OSError(f"network disabled by the test: {what}")

    _connect = socket.socket.connect
    _connect_ex = socket.socket.connect_ex

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse(f"connect {address!r}")
        return _connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse(f"connect_ex {address!r}")
        return _connect_ex(self, address)

    def sendto(self, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse(f"sendto {args[-1]!r}")
        return _sendto(self, *args)

    _sendto = socket.socket.sendto
    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.socket.sendto = sendto
    socket.create_connection = lambda address, *a, **k: _refuse(f"create_connection {address!r}")
    socket.getaddrinfo = lambda host, *a, **k: _refuse(f"getaddrinfo {host!r}")
    socket.gethostbyname = lambda host: _refuse(f"gethostbyname {host!r}")
''')


def _no_network_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "nonet"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(NO_NETWORK)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["MOSE_NET_LOG"] = str(tmp_path / "net.log")
    env.pop("HF_HUB_OFFLINE", None)  # nothing may rely on offline switches to stay offline
    env.pop("TRANSFORMERS_OFFLINE", None)
    return env


def _flow(ws: Path, idx: Path, model_path: Path) -> list[list[str]]:
    common = ["--model", str(model_path), "--index-dir", str(idx)]
    return [
        ["index", str(ws), *common],
        ["search", "edit distance between two strings", "-w", str(ws), *common, "--json"],
        ["similar", f"{ws / 'pkg' / 'strings.py'}:3", "-w", str(ws), *common, "--json"],
        ["status", "-w", str(ws), *common, "--json"],
    ]


@pytest.mark.slow  # the CLI flow in subprocesses
def test_the_cli_flow_and_the_server_open_no_network_connection(tmp_path, model_path):
    ws = make_workspace(tmp_path / "ws")
    env = _no_network_env(tmp_path)
    code = "import socket; socket.create_connection(('127.0.0.1', 9))"
    probe = subprocess.run([sys.executable, "-c", code], env=env, check=False,
                           capture_output=True, text=True)
    assert probe.returncode != 0 and "network disabled" in probe.stderr  # the harness works
    Path(env["MOSE_NET_LOG"]).unlink()
    for args in _flow(ws, tmp_path / "idx", model_path):
        run = subprocess.run([sys.executable, "-m", "mose_lsp", *args], env=env,
                             check=False, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, (args, run.stderr)
    assert not Path(env["MOSE_NET_LOG"]).exists(), Path(env["MOSE_NET_LOG"]).read_text()

    # The stdio server: index, search, similar, status, under the same harness.
    from lsprotocol import types as lsp
    from pygls.uris import from_fs_path
    from pytest_lsp import ClientServerConfig

    async def serve() -> None:
        client = await ClientServerConfig(server_command=[
            sys.executable, "-m", "mose_lsp", "serve", "--log-level", "warning"],
            server_env=env).start()
        try:
            await asyncio.wait_for(client.initialize_session(lsp.InitializeParams(
                capabilities=lsp.ClientCapabilities(),
                workspace_folders=[lsp.WorkspaceFolder(uri=from_fs_path(str(ws)), name="ws")],
                initialization_options={"mose": {"model": str(model_path), "watcher": "watchdog",
                                                 "indexDir": str(tmp_path / "idx2")}})), 60)

            async def cmd(name, *args):
                return await asyncio.wait_for(client.workspace_execute_command_async(
                    lsp.ExecuteCommandParams(command=name, arguments=list(args))), 120)

            for _ in range(600):  # until the first index is done
                if (await cmd("mose.status"))["folders"][0]["state"] == "ready":
                    break
                await asyncio.sleep(0.2)
            hits = (await cmd("mose.search", {"query": "edit distance", "k": 3}))["results"]
            assert hits[0]["symbol"] == "levenshtein_distance"
            await cmd("mose.similar", {"uri": from_fs_path(str(ws / "shlex.py")),
                                       "position": {"line": 40, "character": 0}})
            assert (await cmd("mose.status"))["folders"][0]["state"] == "ready"
        finally:
            await asyncio.wait_for(client.shutdown_session(), 60)
            await client.stop()

    asyncio.run(serve())
    assert not Path(env["MOSE_NET_LOG"]).exists(), Path(env["MOSE_NET_LOG"]).read_text()


def _allowed_roots(*extra: Path) -> list[str]:
    import platformdirs

    roots = {Path(p).resolve() for p in (
        sys.prefix, sys.base_prefix, sys.exec_prefix, *sysconfig.get_paths().values(),
        Path(mose_lsp.__file__).parent, REPO / "training", REPO / "export",  # mose's plugins
        platformdirs.user_cache_dir("mose", appauthor=False), *extra)}
    return [str(r) for r in roots] + ["/proc", "/sys", "/dev", "/etc", "/usr/lib", "/lib",
                                      "/lib64", "/usr/lib64", "/usr/share/zoneinfo",
                                      "/usr/share/locale"]


@pytest.mark.skipif(shutil.which("strace") is None,
                    reason="strace is not installed (apt-get install strace): cannot trace "
                           "the files the CLI opens")
@pytest.mark.slow  # the CLI flow in subprocesses
def test_the_cli_flow_opens_no_file_outside_its_folders(tmp_path, model_path):
    ws = make_workspace(tmp_path / "ws")
    neighbour = tmp_path / "neighbour"  # next to the workspace: must never be opened
    neighbour.mkdir()
    (neighbour / "private.py").write_text("def private():\n    return 1\n")
    os.symlink(neighbour / "private.py", ws / "link_to_private.py")
    idx = tmp_path / "idx"
    allowed = _allowed_roots(ws, idx, model_path)
    # mose itself switches onnxruntime's telemetry client off (it would write a device id and
    # an event database under ~/.cache/Microsoft): not inherited from this process.
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    opened: list[str] = []
    for n, args in enumerate(_flow(ws, idx, model_path)):
        log = tmp_path / f"strace{n}.log"
        run = subprocess.run(["strace", "-f", "-qq", "-e", "trace=open,openat,openat2",
                              "-o", str(log), sys.executable, "-m", "mose_lsp", *args],
                             check=False, capture_output=True, text=True, timeout=600, cwd=ws,
                             env=env)
        if run.returncode != 0 and "ptrace" in run.stderr.lower():
            pytest.skip(f"strace cannot trace here: {run.stderr.strip()[:200]}")
        assert run.returncode == 0, (args, run.stderr)
        for line in log.read_text().splitlines():
            m = re.search(r'open(?:at2?)?\((AT_FDCWD|\d+), "([^"]*)"|open\("([^"]*)"', line)
            if not m or "ENOENT" in line:
                continue
            path = m.group(2) or m.group(3)
            if m.group(1) not in (None, "AT_FDCWD") and not path.startswith("/"):
                continue  # relative to a folder descriptor whose own open is checked
            opened.append(os.path.join(str(ws), path))  # cwd is the workspace
    assert opened
    outside = sorted({p for p in opened
                      if not any(os.path.abspath(p) == r or os.path.abspath(p).startswith(r + "/")
                                 for r in allowed)})
    assert outside == [], outside
    assert not any(str(neighbour) in p for p in opened)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.slow  # the CLI flow in subprocesses
def test_index_folders_are_0700_and_files_0600_after_the_cli_flow(tmp_path, model_path):
    ws = make_workspace(tmp_path / "ws")
    idx = tmp_path / "deep" / "idx"
    old = os.umask(0o022)
    try:
        for args in _flow(ws, idx, model_path):
            run = subprocess.run([sys.executable, "-m", "mose_lsp", *args],
                                 check=False, capture_output=True, text=True, timeout=300)
            assert run.returncode == 0, run.stderr
    finally:
        os.umask(old)
    assert _mode(idx) == 0o700
    files = [p for p in idx.rglob("*")]
    assert any(p.suffix == ".hnsw" for p in files) and any(p.name == "store.sqlite3" for p in files)
    for p in files:
        assert _mode(p) == (0o700 if p.is_dir() else 0o600), (p, oct(_mode(p)))


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) \
                else None
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
                else None
            yield node, owner, name


def test_no_pickle_eval_exec_and_torch_load_only_with_weights_only():
    problems = []
    for folder in ("mose_lsp", "training", "export"):
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            rel = path.relative_to(REPO)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import) and any(
                        a.name.split(".")[0] in ("pickle", "cPickle", "dill", "marshal",
                                                 "shelve") for a in node.names):
                    problems.append(f"{rel}:{node.lineno}: imports a pickle-like module")
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                        "pickle", "dill", "marshal", "shelve"):
                    problems.append(f"{rel}:{node.lineno}: imports from a pickle-like module")
            for node, owner, name in _calls(tree):
                kw = {k.arg: k.value for k in node.keywords}
                if isinstance(node.func, ast.Name) and name in ("eval", "exec", "compile"):
                    problems.append(f"{rel}:{node.lineno}: {name}()")
                if owner == "torch" and name == "load":
                    wo = kw.get("weights_only")
                    if not (isinstance(wo, ast.Constant) and wo.value is True):
                        problems.append(f"{rel}:{node.lineno}: torch.load without "
                                        "weights_only=True")
                if "allow_pickle" in kw and not (isinstance(kw["allow_pickle"], ast.Constant)
                                                 and kw["allow_pickle"].value is False):
                    problems.append(f"{rel}:{node.lineno}: allow_pickle not False")
                if name in ("load", "loads") and owner in ("pickle", "dill", "marshal"):
                    problems.append(f"{rel}:{node.lineno}: {owner}.{name}")
    assert problems == []
    # The runtime's source, as text: no pickle loading anywhere.
    for path in sorted((REPO / "mose_lsp").rglob("*.py")):
        assert "pickle.load" not in path.read_text(encoding="utf-8"), path


SECRET_FILES = {
    ".env": f"API_KEY={SECRET}\n",
    ".env.production": f"DB_PASSWORD={SECRET}\n",
    "deploy/server.pem": f"-----BEGIN PRIVATE KEY-----\n{SECRET}\n",
    "deploy/api.key": SECRET,
    "home/.ssh/id_rsa": f"-----BEGIN OPENSSH PRIVATE KEY-----\n{SECRET}\n",
    "id_ed25519.pub": f"ssh-ed25519 {SECRET}\n",
    "home/.aws/credentials": f"[default]\naws_secret_access_key = {SECRET}\n",
    "config/credentials.json": f'{{"token": "{SECRET}"}}\n',
    "credentials": f"token={SECRET}\n",
    "secrets.py": f'TOKEN = "{SECRET}"\n\ndef token():\n    return TOKEN\n',
    ".netrc": f"machine example.com password {SECRET}\n",
}


def _index_bytes(idx: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(idx.rglob("*")) if p.is_file())


def test_secrets_never_reach_the_index_and_patterns_are_configurable(tmp_path, model):
    ws = make_workspace(tmp_path / "ws")
    for rel, text in SECRET_FILES.items():
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text(text)
    (ws / "vault.py").write_text(f'def vault():\n    return "{SECRET}-vault"\n')
    settings, warnings = Settings.from_dict({"index_dir": str(tmp_path / "idx"), "threads": 1})
    assert warnings == []
    index = WorkspaceIndex.open(ws, settings, model)
    try:
        index.scan()
        index.update_paths(list(SECRET_FILES))  # watcher events name them: still not read
        paths = {s.path for s in index.store.all_files()}
        assert not paths & set(SECRET_FILES), paths & set(SECRET_FILES)
        assert "vault.py" in paths
    finally:
        index.close()
    data = _index_bytes(tmp_path / "idx")
    assert f"{SECRET}-vault".encode() in data  # the probe works: indexed text is in there ...
    assert data.count(SECRET.encode()) == data.count(f"{SECRET}-vault".encode())  # ... only it

    # Configurable: a custom pattern list keeps vault.py out too (and replaces the defaults).
    custom = (*Settings().secret_patterns, "vault.py")
    settings, warnings = Settings.from_dict({"index_dir": str(tmp_path / "idx2"), "threads": 1,
                                             "secret_patterns": list(custom)})
    assert warnings == []
    index = WorkspaceIndex.open(ws, settings, model)
    try:
        index.scan()
        index.update_paths(["vault.py"])
        assert index.store.file_state("vault.py") is None
    finally:
        index.close()
    assert SECRET.encode() not in _index_bytes(tmp_path / "idx2")
