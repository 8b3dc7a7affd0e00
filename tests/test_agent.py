import asyncio
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import urllib.request
import wsgiref.util

import pytest

import probes
from diag.model import Sample
from diag.settings import Settings
from diag.testing import FakeProbe
from probes.agent import Agent
from tests.conftest import child_env, require_tool


def _started(agent: Agent) -> Agent:
    """Start the agent and return once its first tick is done (signalled, not slept for)."""
    ticked = threading.Event()
    agent.sampler.add_listener(lambda tick: ticked.set())
    agent.start()
    assert ticked.wait(10)
    return agent


def _fake_agent(**settings):
    probe = FakeProbe("fake", [Sample("process_resident_memory_bytes", 42.0)])
    return Agent(Settings(interval=3600, **settings), probes=[probe])


def test_serves_metrics_on_loopback_only_by_default():
    agent = _started(_fake_agent(port=0))
    try:
        assert agent.role == "server"
        assert agent.address == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{agent.port}/metrics", timeout=5) as r:
            body = r.read().decode()
        assert "diag_process_resident_memory_bytes 42.0" in body
    finally:
        agent.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", agent.port), timeout=1):
        pass


def test_a_busy_port_is_logged_not_raised(caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        agent = _started(_fake_agent(port=taken.getsockname()[1]))
        try:
            assert agent.port is None
            assert "cannot serve /metrics" in (agent.http_error or "")
            assert agent.sampler.ticks >= 1  # sampling goes on
            assert "sampling continues without it" in caplog.text
        finally:
            agent.stop()


@pytest.mark.e2e
def test_tls_options_pass_through_to_prometheus_client(tmp_path):
    openssl = require_tool("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    agent = _started(_fake_agent(port=0, certfile=str(cert), keyfile=str(key)))
    try:
        context = ssl.create_default_context(cafile=str(cert))
        url = f"https://127.0.0.1:{agent.port}/metrics"
        with urllib.request.urlopen(url, context=context, timeout=5) as r:
            assert "diag_process_resident_memory_bytes 42.0" in r.read().decode()
    finally:
        agent.stop()


def test_wsgi_app_serves_the_agents_registry():
    agent = _fake_agent()
    agent.sampler.tick()
    environ: dict = {"PATH_INFO": "/metrics"}
    wsgiref.util.setup_testing_defaults(environ)
    status = []
    body = b"".join(agent.wsgi_app()(environ, lambda s, h: status.append(s)))
    assert status == ["200 OK"]
    assert b"diag_process_resident_memory_bytes 42.0" in body


def test_asgi_app_serves_the_agents_registry():
    agent = _fake_agent()
    agent.sampler.tick()
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/metrics", "headers": [],
             "query_string": b""}  # fmt: skip
    asyncio.run(agent.asgi_app()(scope, receive, send))
    assert sent[0]["status"] == 200
    assert b"diag_process_resident_memory_bytes 42.0" in b"".join(m.get("body", b"") for m in sent)


def test_start_is_idempotent_and_stop_stops():
    try:
        first = probes.start(interval=3600)
        second = probes.start(interval=1)
        assert first is second is probes.agent()
        assert first.settings.interval == 3600
        assert first.sampler.running
    finally:
        probes.stop()
    assert probes.agent() is None
    assert not first.sampler.running


def _run_python(code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
        env=child_env(),
    )  # fmt: skip


@pytest.mark.e2e
def test_stops_cleanly_at_interpreter_exit():
    out = _run_python(
        "import threading, probes\n"
        "a = probes.start(port=0, interval=0.05)\n"
        "ev = threading.Event(); a.sampler.add_listener(lambda t: ev.set()); ev.wait(10)\n"
        "print('ticked', a.sampler.ticks >= 1)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ticked True\n"
    assert out.stderr == ""


@pytest.mark.e2e
@pytest.mark.parametrize("stderr", ["closed", "raising"])
def test_a_host_whose_stderr_fails_gets_no_exception_from_diags_log_lines(stderr):
    """With no logging configured, Python's last resort writes diag's warnings to stderr and,
    when that fails, a traceback to stderr, which raises again: out of probes.start() (a busy
    port is logged there) into the host, or out of the sampler's thread, which died."""
    out = _run_python(
        textwrap.dedent(f"""
        import io, os, socket, sys, threading
        report = os.fdopen(os.dup(1), "w")

        class Raising(io.TextIOBase):
            def write(self, text):
                raise RuntimeError("the log sink is down")

        if {stderr!r} == "closed":
            sys.stderr = io.StringIO()
            sys.stderr.close()
        else:
            sys.stderr = Raising()
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        from diag.settings import Settings
        from diag.testing import FakeProbe
        from probes.agent import Agent

        def fails(call):
            raise RuntimeError("a probe bug, logged")

        settings = Settings(interval=0.02, port=busy.getsockname()[1])
        agent = Agent(settings, probes=[FakeProbe("bad", fail_with=fails)])
        agent.start()
        ticked = threading.Event()
        agent.sampler.add_listener(lambda t: agent.sampler.ticks > 5 and ticked.set())
        print("ticks", ticked.wait(10), agent.sampler.running, file=report)
        agent.stop()
        report.flush()
        """)
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ticks True True\n"


@pytest.mark.e2e
def test_fork_gives_the_child_its_own_sampler_and_no_duplicate_threads():
    """... and its own detectors: the child's series are judged from the fork on (a warm-up
    of its own), not as the parent's history going on."""
    out = _run_python(
        "import os, threading, time, probes\n"
        "def wait_tick(a):\n"
        "    ev = threading.Event(); a.sampler.add_listener(lambda t: ev.set()); ev.wait(10)\n"
        "def first_judged(a):\n"
        "    return min(s.detector._regime_start for s in a.analyzer._series.values())\n"
        "a = probes.start(interval=0.05); wait_tick(a); wait_tick(a)\n"
        "r, w = os.pipe()\n"
        "forked_at = time.time()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    wait_tick(a); wait_tick(a)\n"
        "    names = [t.name for t in threading.enumerate()]\n"
        "    tick = a.sampler.latest\n"
        "    own = first_judged(a) >= forked_at\n"
        "    os.write(w, f'{names.count(\"diag-sampler\")} {tick is not None} {own}'.encode())\n"
        "    os._exit(0)\n"
        "os.close(w); child = os.read(r, 100).decode(); os.waitpid(pid, 0)\n"
        "names = [t.name for t in threading.enumerate()]\n"
        "print(child, names.count('diag-sampler'), first_judged(a) < forked_at)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "1 True True 1 True\n"


def test_ids_that_name_no_process_are_ignored_not_raised(tmp_path, monkeypatch):
    """A server pid past the C long range in the environment, and a worker directory named
    after one (anyone can make it in /tmp): os.kill would raise OverflowError on them."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    odd = tmp_path / "diag-workers-99999999999999999999-x"
    odd.mkdir()
    environ = {"DIAG_SERVER_PID": "99999999999999999999", "DIAG_WORKER_DIR": str(odd)}
    probe = FakeProbe("fake", [Sample("process_resident_memory_bytes", 42.0)])
    agent = Agent(Settings(interval=3600, port=0), probes=[probe], environ=environ)
    _started(agent)
    try:
        assert agent.running and agent.role == "server"
        assert odd.is_dir()  # named after no possible master: not ours to remove
    finally:
        agent.stop()


def test_a_part_failing_unforeseen_leaves_no_half_started_agent(caplog):
    agent = _fake_agent(port=0)

    def broken():
        raise RuntimeError("unforeseen")

    agent.sampler.start = broken  # the last part to start: /metrics is served by then
    assert agent.start() is agent  # never raises into the host
    assert not agent.running and probes.agent() is None
    assert "the agent did not start (RuntimeError: unforeseen)" in caplog.text
    assert "Traceback" not in caplog.text
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", agent.port), timeout=1):
        pass  # the port it had bound is closed again


def test_a_probe_that_raises_never_reaches_the_host():
    def explode(call):
        raise MemoryError("probe bug")

    agent = Agent(Settings(interval=0.01), probes=[FakeProbe("bad", fail_with=explode)])
    done = threading.Event()
    agent.sampler.add_listener(lambda tick: agent.sampler.ticks >= 50 and done.set())
    agent.start()
    try:
        assert done.wait(20)
        assert agent.sampler.running
        assert agent.sampler.status()[0].enabled is False
    finally:
        agent.stop()
