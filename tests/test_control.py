"""The agent's control socket: what it answers, and whom it refuses."""

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from diag.control import private_directory, request, socket_path
from diag.model import Sample
from diag.settings import Settings
from diag.testing import FakeProbe
from probes.agent import Agent
from probes.control import ControlServer
from tests.conftest import DIAG, child_env


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path


def test_an_agent_answers_latest_and_status(runtime):
    probe = FakeProbe("fake", [Sample("process_resident_memory_bytes", 42.0)])
    agent = Agent(Settings(interval=3600), probes=[probe])
    agent.start()
    try:
        agent.sampler.tick()
        latest = request(os.getpid(), "latest")
        assert latest is not None and latest["pid"] == os.getpid()
        assert ["process_resident_memory_bytes", 42.0, {}] in latest["samples"]
        assert (latest["dumps_total"], latest["dump_active"]) == (0, False)  # live, for watch
        status = request(os.getpid(), "status")
        assert status is not None
        assert {p["name"] for p in status["probes"]} >= {"fake", "requests", "detector"}
        assert request(os.getpid(), "no-such-op") is None
        path = socket_path(os.getpid())
        assert oct(os.stat(os.path.dirname(path)).st_mode & 0o777) == "0o700"
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    finally:
        agent.stop()
    assert not os.path.exists(socket_path(os.getpid()))
    assert request(os.getpid(), "latest") is None  # no agent: simply no answer


def test_another_users_connection_is_refused(runtime):
    path = os.path.join(private_directory(str(runtime / "sock")), "1.sock")
    server = ControlServer(lambda message: {"secret": 1}, path, peer=lambda conn: os.geteuid() + 1)
    server.start()
    try:
        with socket.socket(socket.AF_UNIX) as connection:
            connection.connect(path)  # refused before it may even ask
            assert json.loads(connection.recv(4096)) == {"error": "another user: refused"}
    finally:
        server.stop()


def test_a_directory_others_can_enter_is_refused(tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o755)
    with pytest.raises(PermissionError, match="open to other users"):
        private_directory(str(open_dir))


@pytest.mark.e2e
def test_watch_shows_the_richer_series_of_an_agent_in_the_target(runtime, tmp_path):
    code = ("import threading, probes; a = probes.agent(); ev = threading.Event(); "
            "a.sampler.add_listener(lambda t: ev.set()); ev.wait(10); print('ready', flush=True);"
            " threading.Event().wait()")  # fmt: skip
    env = child_env(XDG_RUNTIME_DIR=str(runtime), DIAG_HISTORY=str(tmp_path / "h"))
    target = subprocess.Popen([*DIAG, "run", "--interval", "0.2", "--", sys.executable, "-c",
                               code], stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        assert target.stdout.readline() == "ready\n"
        result = subprocess.run(
            [*DIAG, "watch", "--pid", str(target.pid), "--interval", "0.2", "--duration", "0.5",
             "--json", "--history", "off"],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
    finally:
        target.kill()
        target.wait()
        target.stdout.close()
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout.splitlines()[0])
    assert row["agent"]["python_allocated_blocks"] > 0
    assert "malloc_in_use_bytes" in row["agent"]


@pytest.mark.e2e
def test_sockets_of_dead_agents_are_removed(runtime):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    directory = private_directory(os.path.dirname(socket_path(os.getpid())))
    stale = os.path.join(directory, f"{dead}.sock")
    open(stale, "w").close()
    agent = Agent(Settings(interval=3600), probes=[FakeProbe()])
    agent.start()
    try:
        assert not os.path.exists(stale)
        assert os.path.exists(socket_path(os.getpid()))
    finally:
        agent.stop()


def test_a_server_stopping_leaves_the_socket_of_one_started_since(runtime):
    """A stop on one thread racing a start on another: the new server binds the same path
    (this pid's); the old one, stopping after, must not unlink the new one's socket."""
    path = socket_path(os.getpid())
    old = ControlServer(lambda message: {"who": "old"}, path)
    old.start()
    new = ControlServer(lambda message: {"who": "new"}, path)
    new.start()  # the old one's file is replaced by the new one's
    try:
        old.stop()
        assert request(os.getpid(), "latest") == {"who": "new"}
    finally:
        new.stop()
    assert not os.path.exists(path)  # its own socket, it removes


def test_a_slow_request_runs_aside_and_a_second_one_is_refused(runtime):
    """A dump's traced window lasts seconds: `latest` is answered meanwhile (a `diag watch`
    reading the same agent), and a second dump gets a line saying why, not a wait."""
    entered, release = threading.Event(), threading.Event()

    def handler(message):
        if message["op"] == "dump":
            entered.set()
            release.wait(10)
            return {"dumped": True}
        return {"latest": True}

    server = ControlServer(handler, socket_path(os.getpid()), slow_ops=frozenset({"dump"}))
    server.start()
    try:
        answers = []
        first = threading.Thread(
            target=lambda: answers.append(request(os.getpid(), "dump", timeout=10)),
        )
        first.start()
        assert entered.wait(5)
        second = request(os.getpid(), "dump", timeout=2, keep_errors=True)
        assert second == {"error": "busy: another dump is running; retry"}
        assert request(os.getpid(), "latest", timeout=1.0) == {"latest": True}
        release.set()
        first.join(10)
        assert answers == [{"dumped": True}]
    finally:
        release.set()
        server.stop()
