"""diag dump against a real process running the agent (started with diag run)."""

import contextlib
import json
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from diag.cli import main
from tests.conftest import DIAG, child_env, memory_cgroup


@pytest.fixture
def short_tmp():
    """pytest's tmp_path is too long for a Unix socket path (108 bytes) under it."""
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="diag-")
    yield __import__("pathlib").Path(path)
    shutil.rmtree(path, ignore_errors=True)


SERVICE = """
import threading
import torch
_AUDIO_CACHE = {}

def synthesize(text):
    return torch.zeros(4096)  # 16 KiB of float32 audio

for i in range(500):
    _AUDIO_CACHE[f"req-{i}"] = synthesize("hello")
view = _AUDIO_CACHE["req-0"][:10]  # a view: its storage must not count twice
print("ready", flush=True)
threading.Event().wait()
"""


@contextlib.contextmanager
def served(script, env, *run_options, **popen):
    """A child running ``script`` under ``diag run``, once it printed "ready"; always killed."""
    command = [*DIAG, "run", *run_options, "--", sys.executable, "-c", script]
    target = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, **popen)
    try:
        assert target.stdout.readline() == "ready\n"
        yield target
    finally:
        target.kill()
        target.wait()
        target.stdout.close()


@pytest.mark.e2e
def test_dump_names_the_module_level_cache_first(tmp_path):
    pytest.importorskip("torch")
    env = child_env(XDG_RUNTIME_DIR=str(tmp_path), DIAG_HISTORY=str(tmp_path / "h"))
    with served(SERVICE, env) as target:
        result = subprocess.run([*DIAG, "dump", "--pid", str(target.pid), "--json"],
                                capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
        shown = subprocess.run([*DIAG, "dump", "--pid", str(target.pid)],
                               capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
        text = shown.stdout
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["pid"] == target.pid
    first = document["owners"][0]
    assert first["path"] == "__main__._AUDIO_CACHE"
    assert first["kind"] == "dict"
    assert first["objects"] == 500
    # The tensors' storages, and the dict itself with its keys (weighed by the walk of plain
    # objects, which found the same dict and leaves its tensors to the holder).
    assert 500 * 4096 * 4 < first["retained_bytes"] < 500 * 4096 * 4 + 64 * 1024
    (content,) = first["contents"]
    assert content == {"type": "torch.Tensor float32", "device": "cpu", "count": 500,
                       "bytes": 500 * 4096 * 4, "beneath": ""}  # fmt: skip
    assert "__main__._AUDIO_CACHE  dict, 500 entries, retains 7.9 MiB" in text
    assert "500 × torch.Tensor float32 cpu (16.0 KiB each)" in text
    assert "__main__.view  Tensor, retains 16.0 KiB" in text  # a global: named by its variable


BIG_HEAP = """
import threading
import torch
_ERRORS = []
def synthesize_or_fail():
    audio = torch.zeros(16)
    raise RuntimeError("vocoder failed")
for _ in range(3000):
    try:
        synthesize_or_fail()
    except RuntimeError as exc:
        _ERRORS.append(exc)  # 3,000 holders: each traceback pins a frame holding one tensor
_JUNK = [[i] for i in range(1_000_000)]  # a heap whose every full pass takes a while
print("ready", flush=True)
threading.Event().wait()
"""


@pytest.mark.e2e
def test_budget_bounds_the_walk_and_an_incomplete_dump_says_so(tmp_path):
    pytest.importorskip("torch")
    env = child_env(XDG_RUNTIME_DIR=str(tmp_path), DIAG_HISTORY=str(tmp_path / "h"))
    with served(BIG_HEAP, env) as target:
        dump = [*DIAG, "dump", "--pid", str(target.pid)]
        # Placing 3,000 holders and walking each one's path up four levels takes passes over
        # a million objects: far more than 0.1 s on any machine.
        hurried = subprocess.run([*dump, "--budget", "0.1", "--json"],
                                 capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
        shown = subprocess.run([*dump, "--budget", "0.1"],
                               capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
        patient = subprocess.run([*dump, "--budget", "60", "--json"],
                                 capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert hurried.returncode == 0, hurried.stderr
    assert json.loads(hurried.stdout)["complete"] is False
    shown_text = " ".join(shown.stdout.split())  # rich wraps lines at the terminal width
    assert "(time budget hit: some objects not placed or their paths not found)" in shown_text
    assert patient.returncode == 0, patient.stderr
    document = json.loads(patient.stdout)
    assert document["complete"] is True
    first = document["owners"][0]
    assert first["path"] == "__main__._ERRORS[<int>].__traceback__ › synthesize_or_fail() › audio"
    assert first["objects"] == 3000


@pytest.mark.e2e
def test_a_process_without_the_agent_is_told_how_to_get_one():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        result = CliRunner().invoke(main, ["dump", "--pid", str(sleeper.pid)])
        assert result.exit_code == 1
        assert "runs no diag agent we can reach" in result.stderr
        assert f"diag attach --pid {sleeper.pid}" in result.stderr
    finally:
        sleeper.kill()
        sleeper.wait()
    # A process no agent can run in: told so, not told to attach (attach refuses it too).
    other = subprocess.Popen(["sleep", "30"])
    try:
        result = CliRunner().invoke(main, ["dump", "--pid", str(other.pid)])
        assert result.exit_code == 1
        assert result.stderr.startswith(f"diag: pid {other.pid} (")
        assert "is not a Python process: a dump reads a Python heap" in result.stderr
        assert "diag attach" not in result.stderr
    finally:
        other.kill()
        other.wait()


@pytest.mark.e2e
def test_the_d_key_of_the_live_watch_view_shows_the_dump(short_tmp):
    """A real terminal (tmux): `diag watch` on a process with the agent, then the `d` key."""
    import os

    from tests.conftest import PYTHON, REPO, poll, require_tool

    pytest.importorskip("torch")
    tmux = require_tool("tmux")
    tmp_path = short_tmp
    env = child_env(XDG_RUNTIME_DIR=str(tmp_path), DIAG_HISTORY=str(tmp_path / "h"))
    session = f"diag-dump-key-{os.getpid()}"

    def screen(needle):
        shown = subprocess.run([tmux, "capture-pane", "-p", "-t", session],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
        return shown if needle in shown else None

    with served(SERVICE, env) as target:
        command = (f"cd {REPO} && XDG_RUNTIME_DIR={tmp_path} DIAG_HISTORY={tmp_path}/w "
                   f"PYTHONPATH={REPO} {PYTHON} -m diag watch --pid {target.pid} "
                   "--interval 0.3")  # fmt: skip
        subprocess.run([tmux, "new-session", "-d", "-s", session, "-x", "150", "-y", "60",
                        command], check=True)  # fmt: skip
        try:
            try:
                poll(lambda: screen("d: dump"), timeout=30)
            except AssertionError:
                print(screen(""))
                raise
            subprocess.run([tmux, "send-keys", "-t", session, "d"], check=True)
            try:
                shown = poll(lambda: screen("__main__._AUDIO_CACHE"), timeout=60)
            except AssertionError:
                print(screen(""))  # what the terminal showed instead
                raise
            assert "500 × torch.Tensor float32 cpu" in shown
        finally:
            subprocess.run([tmux, "kill-session", "-t", session], check=False)


@pytest.mark.e2e
def test_watch_dumps_by_itself_when_the_verdict_turns_leak(short_tmp):
    """A leak the detector calls within the test's time: a 1.2 GB cgroup limit makes the
    forecast short, and the detector's clock runs 120 times faster (as in the demo)."""
    pytest.importorskip("torch")
    tmp_path = short_tmp
    env = child_env(XDG_RUNTIME_DIR=str(tmp_path), DIAG_HISTORY=str(tmp_path / "h"),
                    DIAG_TIME_SCALE="120")  # fmt: skip
    leaking = SERVICE.replace("threading.Event().wait()", LEAK_LOOP)
    with memory_cgroup(1200 * 1024 * 1024) as join, served(leaking, env, preexec_fn=join) as target:
        watched = subprocess.run(
            [*DIAG, "watch", "--pid", str(target.pid), "--interval", "0.2", "--duration", "40",
             "--json", "--dump-on-leak"],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
    events = [json.loads(line) for line in watched.stdout.splitlines()]
    dumps = [e for e in events if e.get("event") == "dump"]
    assert len(dumps) == 1, watched.stderr
    assert dumps[0]["owners"][0]["path"] == "__main__._AUDIO_CACHE"
    first_leak = next(i for i, e in enumerate(events) if e.get("verdict") == "leak")
    assert first_leak < events.index(dumps[0])  # taken once the verdict turned


LEAK_LOOP = """
import time
i = 500
while True:
    i += 1
    _AUDIO_CACHE[f"req-{i}"] = synthesize("hello")
    time.sleep(0.002)
"""


FRAGMENTED = """
import threading
# 300 MB in 1 KiB blocks (above pymalloc's 512 bytes: glibc malloc serves them), then all but
# one in 64 freed: the survivors pin every page run, so free() alone returns nothing.
blocks = [bytes(1024) for _ in range(300_000)]
survivors = blocks[::64]
del blocks
print("ready", flush=True)
threading.Event().wait()
"""


@pytest.mark.e2e
def test_trim_proves_allocator_retention_in_a_real_fragmented_heap(short_tmp):
    env = child_env(XDG_RUNTIME_DIR=str(short_tmp), DIAG_HISTORY=str(short_tmp / "h"))
    with served(FRAGMENTED, env, "--interval", "0.5") as target:
        time.sleep(3)  # a few ticks: the cause reads RSS's recent slope
        rss_before = _resident(target.pid)
        result = subprocess.run(
            [*DIAG, "dump", "--pid", str(target.pid), "--trim", "--json"],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        rss_after = _resident(target.pid)
    assert result.returncode == 0, result.stderr
    cause = json.loads(result.stdout)["cause"]
    assert cause["kind"] == "allocator_retention", cause
    returned = [line for line in cause["evidence"] if line.startswith("malloc_trim(0) returned")]
    assert returned, cause
    # What trim gave back is really gone from the process: most of the 300 MB.
    assert rss_before - rss_after > 200 * 1024 * 1024, (rss_before, rss_after)


def _resident(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * 4096
