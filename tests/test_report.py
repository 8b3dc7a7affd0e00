"""diag report: how the run ended, when the detector first warned, and the renderings."""

import json
import math
import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from diag import procfs
from diag.cli import main
from diag.history import HistoryWriter, read_run
from diag.model import Sample
from reports import html, markdown, postmortem
from reports.text import ENDINGS
from tests.conftest import child_env, memory_cgroup

MiB = 1024 * 1024
GiB = 1024 * MiB


def _leaking_run(run_dir, stop=False, hours=6.0, step=10.0):
    """A history like the agent writes for a service leaking 0.1 MiB/s from its second hour,
    under a 4 GiB cgroup limit; the clock is the samples' own (no sleeping)."""
    writer = HistoryWriter(str(run_dir), flush_seconds=0.0)
    t0 = 1_700_000_000.0
    writer.write_event("start", t0, pid=4242, command=["python", "tts_service.py"])
    rss = GiB
    for i in range(int(hours * 3600 / step)):
        t = t0 + i * step
        if i * step > 3600:
            rss += 0.1 * MiB * step
        saw = 30 * MiB * math.sin(i / 7.0)
        writer.write_samples(t, [
            Sample("process_resident_memory_bytes", rss + saw),
            Sample("memory_limit_bytes", 4.0 * GiB),
            Sample("memory_limit_usage_bytes", rss + saw + 200 * MiB),
            Sample("retained_bytes_per_request", 1.9 * MiB, (("endpoint", "/talk"),)),
        ])  # fmt: skip
    if stop:
        writer.write_event("stop", t, reason="stop")
    writer.close()
    return t0, t


def test_a_leaking_run_killed_without_a_stop(tmp_path):
    run_dir = tmp_path / "20231114T221320Z-4242"
    t0, last = _leaking_run(run_dir)
    data = postmortem.build(str(run_dir), read_kernel_log=lambda: [])
    document = data.to_json()
    for key in ("pid", "command", "first_sample", "last_sample", "samples", "ended", "alerts",
                "lead_seconds"):  # fmt: skip
        assert key in document
    assert document["pid"] == 4242
    assert document["command"] == ["python", "tts_service.py"]
    assert (document["first_sample"], document["last_sample"]) == (t0, last)
    assert document["samples"] == 2160
    assert document["ended"]["how"] == "killed"
    assert document["ended"]["clean_stop"] is False
    (alert,) = document["alerts"]
    assert alert["series"] == "process_resident_memory_bytes"
    assert t0 + 3600 < alert["start"] < t0 + 3 * 3600
    assert document["lead_seconds"] == pytest.approx(last - alert["start"])
    assert document["retained_per_request"] == {"/talk": 1.9 * MiB}
    json.dumps(document)  # serialisable as it is


def test_kernel_log_names_an_oom_kill():
    line = ("Memory cgroup out of memory: Killed process 4242 (python) total-vm:283188kB, "
            "anon-rss:194532kB")  # fmt: skip
    other = "Memory cgroup out of memory: Killed process 42421 (python)"
    assert procfs.oom_lines_for(4242, [other, line]) == [line]


def test_oom_kill_from_the_kernel_log_and_from_the_limit(tmp_path):
    run_dir = tmp_path / "run-4242"
    _leaking_run(run_dir)
    kernel = ["oom-kill:constraint=CONSTRAINT_MEMCG,task=python,pid=4242,uid=0"]
    ended = postmortem.build(str(run_dir), read_kernel_log=lambda: kernel).ended
    assert ended["how"] == "oom-kill"
    assert ended["kernel_log"] == kernel

    def denied():
        raise PermissionError("/dev/kmsg")

    ended = postmortem.build(str(run_dir), read_kernel_log=denied).ended
    assert ended["kernel_log"] == "the kernel log is not readable (root or CAP_SYSLOG needed)"
    history = read_run(str(run_dir))
    share = history.get("memory_limit_usage_bytes").values[-1] / (4 * GiB)
    assert ended["usage_of_limit_at_last_sample"] == pytest.approx(share, abs=1e-4)


def test_an_oom_kill_is_certain_only_where_the_kernel_says_so(tmp_path):
    """Memory at its limit and no stop record make an OOM kill likely, not certain (a
    userspace killer, an operator's SIGKILL at the limit): the words say which it was."""
    run_dir = tmp_path / "run-4242"
    _leaking_run(run_dir, hours=8.0)  # memory over 90 % of its limit at the end
    kernel = ["oom-kill:constraint=CONSTRAINT_MEMCG,task=python,pid=4242,uid=0"]
    logged = postmortem.build(str(run_dir), read_kernel_log=lambda: kernel).ended
    assert ENDINGS["oom-kill"](logged) == "killed by the OOM killer"
    inferred = postmortem.build(str(run_dir), read_kernel_log=lambda: []).ended
    assert inferred["how"] == "oom-kill"
    assert (
        ENDINGS["oom-kill"](inferred) == "killed at its memory limit, most likely by an OOM killer"
    )


def test_a_clean_stop_is_an_exit(tmp_path):
    _leaking_run(tmp_path / "run-4242", stop=True, hours=1)
    ended = postmortem.build(str(tmp_path / "run-4242")).ended
    assert ended == {"how": "exit", "clean_stop": True, "at": pytest.approx(1_700_003_590.0),
                     "reason": "stop"}  # fmt: skip


LIVE = """
import threading, probes
a = probes.start(interval=0.1)
ready = threading.Event()
a.sampler.add_listener(lambda t: a.sampler.ticks >= 15 and ready.set())
ready.wait(30)  # 1.5 s of ticks: the history hands them to the kernel at least once a second
print("ready", flush=True)
import sys; sys.stdin.read()
"""


@pytest.mark.e2e
def test_a_running_process_and_then_its_real_sigkill(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", LIVE], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env=child_env(DIAG_HISTORY=str(tmp_path)))  # fmt: skip
    try:
        assert proc.stdout.readline() == "ready\n"
        runner = CliRunner()
        result = runner.invoke(main, ["report", str(tmp_path), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["ended"] == {"how": "running", "pid": proc.pid}
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        result = runner.invoke(main, ["report", str(tmp_path), "--json"])
        document = json.loads(result.stdout)
        assert document["ended"]["how"] == "killed"
        assert document["samples"] >= 5
        assert document["pid"] == proc.pid
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()


LEAKER = """
import threading, probes
probes.start(interval=0.1)
hold, ev = [], threading.Event()
while True:
    hold.append(bytearray(b"x" * (1 << 20)))
    ev.wait(0.02)
"""


@pytest.mark.e2e
def test_a_real_oom_kill_in_a_memory_cgroup(tmp_path):
    with memory_cgroup(150 * MiB) as join:
        proc = subprocess.run([sys.executable, "-c", LEAKER], preexec_fn=join,
                              env=child_env(DIAG_HISTORY=str(tmp_path)), timeout=120)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL
    result = CliRunner().invoke(main, ["report", str(tmp_path), "--json"])
    ended = json.loads(result.stdout)["ended"]
    assert ended["how"] == "oom-kill", ended
    assert any("Killed process" in line or "oom-kill" in line for line in ended["kernel_log"])


def test_markdown_and_html_render_the_story(tmp_path):
    _leaking_run(tmp_path / "run-4242")
    data = postmortem.build(str(tmp_path / "run-4242"), read_kernel_log=lambda: [])
    text = markdown.render(data)
    assert "ended without a stop record" in text
    assert "| `process_resident_memory_bytes` |" in text
    assert "1.9 MiB per /talk request" in text
    page = html.render(data)
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert page.count("<svg") == 1
    assert "first warning" in page and "killed" in page


def test_an_html_page_that_cannot_be_written_leaves_the_old_one_whole(tmp_path, monkeypatch):
    """A write that fails half-way (a full disk) keeps the page that was there, not half of
    a new one, and leaves no partial file behind."""
    _leaking_run(tmp_path / "run-4242")
    page = tmp_path / "report.html"
    page.write_text("<!DOCTYPE html><p>the last good report</p>")

    class FullDisk:
        def __init__(self, real):
            self.real = real

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.real.close()

        def write(self, text):
            self.real.write(text[:4096])
            raise OSError(28, "No space left on device")

    real_open = open
    monkeypatch.setattr(
        "builtins.open",
        lambda path, mode="r", *a, **k: (
            FullDisk(real_open(path, mode, *a, **k))
            if str(path).endswith(".partial")
            else real_open(path, mode, *a, **k)
        ),
    )
    result = CliRunner().invoke(main, ["report", str(tmp_path / "run-4242"), "--html", str(page)])
    monkeypatch.undo()
    assert result.exit_code == 2
    assert result.stderr == f"diag: cannot write {page}: No space left on device\n"
    assert page.read_text() == "<!DOCTYPE html><p>the last good report</p>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "run-4242"]


@pytest.mark.e2e
def test_a_closed_stdout_is_said_not_an_empty_success(tmp_path):
    """``diag report >&-``: Python has no sys.stdout and click prints nothing, so the report
    went nowhere; it must not exit 0. With --html the page is the output, and is written."""
    _leaking_run(tmp_path / "run-4242", stop=True, hours=1)

    def closed_stdout(*args):
        return subprocess.run(
            [sys.executable, "-m", "diag", *args],
            preexec_fn=lambda: os.close(1),
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
            timeout=120,
        )

    for command in (["report", str(tmp_path / "run-4242")], ["dump", "--pid", "1"]):
        result = closed_stdout(*command)
        assert result.returncode == 2, result.stderr
        assert result.stderr == (
            "diag: standard output is closed: there is nowhere to print to; "
            "redirect it (> out.txt)\n"
        )
    page = tmp_path / "report.html"
    result = closed_stdout("report", str(tmp_path / "run-4242"), "--html", str(page))
    assert result.returncode == 0 and result.stderr == f"wrote {page}\n"
    assert page.read_text().startswith("<!DOCTYPE html>")


def test_no_history_is_a_clear_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert result.stderr == (
        f"diag: {tmp_path / 'nothing'} is not a directory; give a run or history directory "
        "(diag run --history DIR)\n"
    )
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "holds no diag history" in result.stderr


CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0", "--window-size=1000,900",
)  # fmt: skip


def _screenshot(chromium, page, png, profile):
    return subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
         page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.e2e
def test_the_html_renders_in_a_real_headless_chromium(tmp_path):
    from tests.conftest import require_tool

    chromium = require_tool("chromium")
    _leaking_run(tmp_path / "run-4242")
    page = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", str(tmp_path / "run-4242"), "--html", str(page)])
    assert result.exit_code == 0, result.output
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    shot = _screenshot(chromium, page, tmp_path / "report.png", tmp_path / "profile")
    assert shot.returncode == 0, shot.stderr
    baseline = _screenshot(chromium, blank, tmp_path / "blank.png", tmp_path / "profile2")
    assert baseline.returncode == 0, baseline.stderr
    # The page logged nothing to its console (no script errors, no failed loads).
    console = [line for line in shot.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    assert "net::ERR" not in shot.stderr  # nothing was fetched from anywhere
    # It rendered: a screenshot far richer than the same browser's blank page.
    png = (tmp_path / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert len(png) > 10 * len((tmp_path / "blank.png").read_bytes())
    dom = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile3'}", "--dump-dom",
         page.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    assert "<svg" in dom and "<polyline" in dom and "first warning" in dom


def test_without_a_path_the_most_recent_run_of_the_default_history(tmp_path, monkeypatch):
    _leaking_run(tmp_path / "20231114T221320Z-1111", stop=True, hours=1)
    _leaking_run(tmp_path / "20231115T080000Z-4242", hours=1)
    monkeypatch.setenv("DIAG_HISTORY", str(tmp_path))
    result = CliRunner().invoke(main, ["report", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["run_dir"].endswith("20231115T080000Z-4242")
