"""A real Milvus standalone server for the server-mode tests (issue #8).

The `milvus` package (Milvus 2.3.5 "lite" standalone: the C++/Go server with embedded etcd and
rocksmq, no Docker) lives in a virtualenv of its own, because it pins an old pymilvus: its python is
$LOOKALIKE_MILVUS_SERVER_PYTHON (default ~/.cache/lookalike/milvus-server-2.3.5/bin/python; `make test`
creates it). The server runs as a subprocess in a new process group, on a free port, with its data
in a temporary folder; the whole group is killed at the end.

Fixtures:
- `milvus_server_process` (session): the `MilvusServerProcess` handle (`.uri`, `.stop()`,
  `.start()`, `.restart()`);
- `milvus_server` (session): its URI;
- `server_uri` (function): the URI, with every collection dropped first (collection names are
  fixed by `schemas`, so each test starts from an empty server).

Without the server's virtualenv the server tests are skipped, or fail with one line when
LOOKALIKE_REQUIRE_SERVER=1 (CI), so a broken CI setup cannot pass by skipping them.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import NoReturn, Optional

import pytest

SERVER_PYTHON_ENV = "LOOKALIKE_MILVUS_SERVER_PYTHON"
REQUIRE_ENV = "LOOKALIKE_REQUIRE_SERVER"
DEFAULT_SERVER_PYTHON = Path.home() / ".cache" / "lookalike" / "milvus-server-2.3.5" / "bin" / "python"

# Runs under the server venv's python: configures and starts the server, prints one JSON line
# once /healthz answers OK, then waits for the server process (and exits with its status).
_LAUNCHER = r"""
import json, os, random, socket, sys
from milvus import MilvusServer, MilvusServerConfig

base, port = sys.argv[1], int(sys.argv[2])
auto_compaction = len(sys.argv) < 4 or sys.argv[3] == "1"

def try_bind_port(self, p):
    # SO_REUSEADDR: a restarted server binds the same port while the old connections linger in
    # TIME_WAIT (the server itself, written in Go, listens with SO_REUSEADDR too).
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", p)); s.listen(); return s
    except OSError:
        s.close(); return None

MilvusServerConfig.try_bind_port = try_bind_port
config = MilvusServerConfig()
config.update(proxy_port=port)  # explicit: bind this one or fail
# The internal ports (etcd, coordinators, nodes) are searched upwards from a start; start them in a
# range derived from the proxy port, so servers of concurrent test sessions do not race for them.
rng = random.Random(port)
for key, item in config.configurable_items.items():
    if key.endswith("_port") and key != "proxy_port":
        item[1] = rng.randrange(20000, 60000)
# The embedded etcd listens on 2379/2380 whatever etcd_port says (its client is in-process), so a
# second server on the machine would die at start: give it ports of its own in a config file
# (etcd.config.path, which the template lacks).
def pick(start):
    p, sock = config.resolve_port(start)
    sock.close()
    return p
client, peer = pick(rng.randrange(20000, 60000)), pick(rng.randrange(20000, 60000))
config.update(etcd_port=client)
etcd_yaml = os.path.join(base, "etcd.yaml")
os.makedirs(base, exist_ok=True)
with open(etcd_yaml, "w") as f:
    f.write(f"name: default\nlisten-client-urls: http://127.0.0.1:{client}\n"
            f"advertise-client-urls: http://127.0.0.1:{client}\n"
            f"listen-peer-urls: http://127.0.0.1:{peer}\n"
            f"initial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
            f"initial-cluster: default=http://127.0.0.1:{peer}\n")
assert "\netcd:\n  endpoints:" in config.template_text
config.template_text = config.template_text.replace(
    "\netcd:\n  endpoints:", f"\netcd:\n  config:\n    path: {etcd_yaml}\n  endpoints:", 1)
# After a crash the new process waits for the dead one's etcd sessions to expire before it serves
# the collections again (measured: ~25 s to load with the default 30 s ttl); 10 s keeps a crash
# test short and is still far above a keep-alive's delay on a loaded machine.
config.set("common.session.ttl", 10)
if not auto_compaction:  # benchmarks: no background merge of segments while timing searches
    assert "    enableAutoCompaction: true" in config.template_text
    config.template_text = config.template_text.replace(
        "    enableAutoCompaction: true", "    enableAutoCompaction: false", 1)
server = MilvusServer(config)
server.webservice_port = rng.randrange(20000, 60000)  # /healthz; searched upwards from here
server.set_base_dir(base)
t0 = __import__("time").time()
server.start()
print(json.dumps({"port": server.listen_port, "health_port": server.webservice_port,
                  "pid": server.server_proc.pid, "seconds": round(__import__("time").time() - t0, 1)}),
      flush=True)
sys.exit(server.server_proc.wait())
"""


def server_python() -> Path:
    return Path(os.environ.get(SERVER_PYTHON_ENV) or DEFAULT_SERVER_PYTHON).expanduser()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerUnavailable(RuntimeError):
    pass


class MilvusServerProcess:
    """One Milvus standalone server in its own process group; data persists across restarts."""

    def __init__(self, python: Path, base_dir: Path, port: Optional[int] = None,
                 auto_compaction: bool = True):
        self.python = Path(python)
        self.base_dir = Path(base_dir)
        self.port = port or free_port()
        self.auto_compaction = auto_compaction
        self.proc: Optional[subprocess.Popen] = None
        self.start_seconds: Optional[float] = None
        self.info: dict = {}

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _log_tail(self, n: int = 15) -> str:
        lines = []
        for name in ("launcher.log", "logs/milvus-stderr.log"):
            p = self.base_dir / name
            if p.is_file():
                lines += p.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(lines)

    def start(self, timeout: float = 180.0) -> "MilvusServerProcess":
        if self.running:
            return self
        self.base_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.base_dir / "launcher.log", "ab")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [str(self.python), "-c", _LAUNCHER, str(self.base_dir), str(self.port),
             "1" if self.auto_compaction else "0"],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        out = self.proc.stdout
        assert out is not None  # stdout=PIPE
        line = b""
        deadline = time.monotonic() + timeout
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.stop()
                raise ServerUnavailable(
                    f"Milvus server did not become healthy in {timeout:.0f} s "
                    f"(base dir {self.base_dir}):\n{self._log_tail()}")
            ready, _, _ = select.select([out], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(out.fileno(), 4096)
                if not chunk and self.proc.poll() is None:
                    time.sleep(0.1)
                line += chunk
        self.info = json.loads(line.decode().strip().splitlines()[-1])
        self.start_seconds = time.perf_counter() - t0
        self._wait_serving(deadline)
        return self

    def _wait_serving(self, deadline: float) -> None:
        """/healthz answers before every coordinator is ready: wait for a real RPC to work."""
        from pymilvus import MilvusClient

        last = None
        while time.monotonic() < deadline:
            try:
                c = MilvusClient(uri=self.uri, timeout=10)
                try:
                    c.list_collections()
                    return
                finally:
                    c.close()
            except Exception as e:  # noqa: BLE001 - not ready yet
                last = e
                time.sleep(0.5)
        self.stop()
        raise ServerUnavailable(f"Milvus server at {self.uri} does not answer: {last}")

    def stop(self, sig: int = signal.SIGKILL, grace: float = 30.0) -> None:
        """Signal the whole process group (launcher + milvus binary) and wait until every process
        of it is gone: SIGKILL is a crash, SIGTERM a graceful stop (SIGKILL after `grace` s)."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + grace
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            deadline = time.monotonic() + 15
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.2)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=15)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _port_open(self.port):
            time.sleep(0.2)

    def restart(self, timeout: float = 180.0) -> "MilvusServerProcess":
        self.stop()
        return self.start(timeout)


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies left to an init that does not reap them
    do not count: they hold no port and no file)."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel, zombies included
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            return True
    return False


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _unavailable(message: str) -> NoReturn:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(message)


def start_server(base_dir: Path, port: Optional[int] = None) -> MilvusServerProcess:
    """A started server, or skip/fail the calling test when it cannot be had."""
    python = server_python()
    if not python.is_file():
        _unavailable(f"Milvus server venv not found: {python} does not exist; create it with "
                     f"`python3 -m venv V && V/bin/pip install milvus==2.3.5 pymilvus==2.3.7 'setuptools<70' "
                     f"'marshmallow<4'` and set {SERVER_PYTHON_ENV}=V/bin/python (`make test` does this)")
    try:
        return MilvusServerProcess(python, base_dir, port).start()
    except ServerUnavailable as e:
        _unavailable(str(e))


def drop_all(uri: str) -> None:
    from pymilvus import MilvusClient

    c = MilvusClient(uri=uri)
    try:
        for name in c.list_collections():
            c.drop_collection(name)
    finally:
        c.close()


@pytest.fixture(scope="session")
def milvus_server_process(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("milvus-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def milvus_server(milvus_server_process) -> str:
    return milvus_server_process.uri


@pytest.fixture
def server_uri(milvus_server_process) -> str:
    """The session server's URI, emptied of collections (restarted if a test left it stopped)."""
    milvus_server_process.start()
    drop_all(milvus_server_process.uri)
    return milvus_server_process.uri
