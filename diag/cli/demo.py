"""``diag demo``: the seed story end to end, in under two minutes, on one machine.

The reference TTS service (``examples/tts_service.py``: FastAPI on uvicorn, every request's
audio kept in ``_AUDIO_CACHE``) runs under ``diag run`` inside a memory cgroup with a limit
(where the machine allows it), a load generator drives it, and the demo shows what a user of
diag would see: the live watch, the detector's warning with the time left before the OOM kill,
the dump naming the holder and the function that allocated it, the kill itself and the report.

Hours are compressed into a minute: the detector's clock runs 120 times faster
(``DIAG_TIME_SCALE``), the agent ticks every 0.25 s and the audio is 4 times longer than the
service's default. Everything else is the real thing. Exit 0 only when the leak was detected
and the holder named.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from diag.errors import DiagError
from diag.units import format_bytes, format_duration

if TYPE_CHECKING:
    from diag.memcg import MemoryCgroup

TIME_SCALE = 120
LIMIT_MIB = 600
RATE = 12.0
DEADLINE = 110.0  # seconds: the demo gives up (and fails) after this
STUCK_SECONDS = 10.0  # at the cgroup's limit, not killed, this long: the demo ends it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _examples_root() -> Path:
    root = Path(__file__).resolve().parents[2]
    if not (root / "examples" / "tts_service.py").is_file():
        raise DiagError(
            "diag demo runs the reference service in the repository's examples/: run it from a "
            "clone (make demo), where diag is installed in editable mode"
        )
    return root


def _wait_until_serving(url: str, service: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise DiagError(f"the demo service exited early (status {service.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise DiagError(f"the demo service did not answer {url} within {timeout:.0f} s")


def names_the_culprit(document: dict[str, Any]) -> bool:
    """The dump's first holder is the cache, and its stacks name synthesize."""
    owners = document.get("owners") or []
    if not owners or not owners[0]["path"].endswith("_AUDIO_CACHE"):
        return False
    return any(
        frame["function"] == "synthesize"
        for stack in owners[0]["allocation_stacks"]
        for frame in stack["frames"]
    )


class StuckAtLimit:
    """Whether the service has been stuck at its cgroup's limit, charges refused and nothing
    killed, for ``STUCK_SECONDS`` (where the kernel kills at the limit, it does so at once:
    ten seconds there without a kill is reclaim going round, not a kill on its way)."""

    def __init__(self, cgroup: MemoryCgroup) -> None:
        self._cgroup = cgroup
        self._refused: int | None = None
        self._since: float | None = None

    def for_long(self, now: float) -> bool:
        refused = self._cgroup.stuck_at_limit()
        if refused is None or self._refused is None or refused <= self._refused:
            self._since = None
        elif self._since is None:
            self._since = now
        self._refused = refused
        return self._since is not None and now - self._since >= STUCK_SECONDS


class Demo:
    def __init__(self, say: Any, interactive: bool) -> None:
        self.say = say
        self.interactive = interactive
        self.detected: dict[str, Any] | None = None
        self.dump: dict[str, Any] | None = None

    def run(self) -> bool:
        from diag.memcg import MemoryCgroup

        root = _examples_root()
        runtime = tempfile.mkdtemp(prefix="diag-demo-")  # short: a socket path has 108 bytes
        history = os.path.join(runtime, "history")
        cgroup, why_not = MemoryCgroup.create(LIMIT_MIB * 2**20, f"diag-demo-{os.getpid()}")
        if cgroup is None:
            self.say(f"(no memory cgroup: {why_not}; the demo ends the service with SIGKILL)")
        port, metrics_port = _free_port(), _free_port()
        env = {
            **os.environ,
            "XDG_RUNTIME_DIR": runtime,
            "DIAG_HISTORY": history,
            "DIAG_TIME_SCALE": str(TIME_SCALE),
            "DIAG_ESCALATION_WINDOW": "4",
            "TTS_SAMPLES_PER_CHAR": "1024",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
        }
        command = [
            sys.executable, "-m", "diag", "run", "--port", str(metrics_port), "--interval",
            "0.25", "--", sys.executable, "-m", "uvicorn", "examples.tts_service:app",
            "--port", str(port), "--log-level", "warning",
        ]  # fmt: skip
        limit = f", memory limit {LIMIT_MIB} MiB (cgroup)" if cgroup else ""
        self.say(f"$ {' '.join(command[2:])}\n  metrics on :{metrics_port}{limit}")
        service = subprocess.Popen(
            command, cwd=root, env=env, preexec_fn=cgroup.join if cgroup else None
        )
        stop_load = threading.Event()
        try:
            _wait_until_serving(f"http://127.0.0.1:{port}/healthz", service, 60.0)
            sys.path.insert(0, str(root))
            from examples.loadgen import drive

            load = threading.Thread(
                target=drive,
                args=(f"http://127.0.0.1:{port}", RATE, DEADLINE),
                kwargs={"stop": stop_load},
                daemon=True,
            )
            load.start()
            self.say(f"driving POST /talk at {RATE:.0f} requests/s (examples/loadgen.py)")
            ended = self._watch(service, runtime, cgroup)
        finally:
            stop_load.set()
            if service.poll() is None:
                service.kill()
            service.wait()
            if cgroup is not None:
                cgroup.remove()
        self.say(f"\nthe service ended: {ended}")
        self._report(history)
        shutil.rmtree(runtime, ignore_errors=True)
        return self.detected is not None and self.dump is not None and names_the_culprit(self.dump)

    def _watch(
        self, service: subprocess.Popen[bytes], runtime: str, cgroup: MemoryCgroup | None
    ) -> str:
        from probes.watcher import Watcher, follow
        from reports.live import LivePanel, ended_text, tick_line

        pid = service.pid
        watcher = Watcher(pid, None, time_scale=TIME_SCALE)
        live = LivePanel(pid, ["examples.tts_service"]) if self.interactive else None
        last_line = 0.0
        stuck = StuckAtLimit(cgroup) if cgroup is not None else None
        try:
            for row in follow(watcher, 0.5, threading.Event(), duration=DEADLINE):
                if stuck is not None and stuck.for_long(time.monotonic()):
                    # The kernel may reclaim the service's own code pages over and over
                    # instead of killing it; userspace OOM killers exist for this.
                    os.kill(pid, signal.SIGKILL)
                    return (
                        f"stuck at its memory limit for {STUCK_SECONDS:.0f} s, the kernel "
                        "reclaiming its pages instead of killing it: ended with SIGKILL, as a "
                        "userspace OOM killer (systemd-oomd, earlyoom) would"
                    )
                if live is not None:
                    live.show(row)
                elif time.monotonic() - last_line >= 3:
                    last_line = time.monotonic()
                    self.say(tick_line(row))
                if row["verdict"] == "leak" and self.detected is None:
                    if live is not None:
                        live.stop()
                        live = None
                    self.detected = row
                    self._warn_and_dump(pid, row, runtime)
                    if cgroup is None:
                        self.say("no cgroup here: ending the service with SIGKILL instead")
                        os.kill(pid, signal.SIGKILL)
        finally:
            if live is not None:
                live.stop()
        if watcher.exit is not None:
            return ended_text(watcher.exit)
        return "still running at the demo's deadline (killed)"

    def _warn_and_dump(self, pid: int, row: dict[str, Any], runtime: str) -> None:
        from diag.control import request
        from reports.dump import render_text

        when = row["seconds_to_oom"]
        oom = f", out of memory in {format_duration(when)}" if when is not None else ""
        self.say(
            f"\n!! the detector calls a leak: RSS {format_bytes(row['rss_bytes'])}, growing "
            f"{format_bytes(row['growth_bytes_per_second'] or 0)}/s{oom} ({row['reason']})"
        )
        self.say(f"$ diag dump --pid {pid}")
        environ = {**os.environ, "XDG_RUNTIME_DIR": runtime}
        document = request(pid, "dump", timeout=60.0, environ=environ, top=3)
        if document is not None and not names_the_culprit(document):
            # The agent's own window (run when growth began) has not finished: trace one now.
            document = request(pid, "dump", timeout=60.0, environ=environ, top=3, window=3)
        if document is None:
            self.say("the agent did not answer the dump request")
            return
        self.dump = document
        self.say(render_text(document, width=110))

    def _report(self, history: str) -> None:
        from rich.console import Console

        from diag.history import find_runs
        from reports import postmortem, terminal

        runs = [run for run in find_runs(history) if not run.endswith("-watch")]
        if not runs:
            self.say("no history was recorded")
            return
        self.say(f"$ diag report {runs[-1]}")
        terminal.render(postmortem.build(runs[-1]), Console())


@click.command()
def demo() -> None:
    """The seed story in under two minutes: a leaking TTS service, caught, named, OOM-killed.

    Exit 0 when the leak was detected before the end and the dump named _AUDIO_CACHE and
    synthesize(); 1 otherwise.
    """
    interactive = sys.stdout.isatty()
    ok = Demo(lambda line: click.echo(line), interactive).run()
    if not ok:
        raise DiagError("the demo did not detect the leak and name its holder in time")
    click.echo("\ndiag demo: the leak was detected, its holder named, its end explained.")
