"""diag dump against a real process running the agent (started with diag run)."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from diag.cli import main
from tests.conftest import DIAG, child_env

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


@pytest.mark.e2e
def test_dump_names_the_module_level_cache_first(tmp_path):
    pytest.importorskip("torch")
    env = child_env(XDG_RUNTIME_DIR=str(tmp_path), DIAG_HISTORY=str(tmp_path / "h"))
    target = subprocess.Popen([*DIAG, "run", "--", sys.executable, "-c", SERVICE],
                              stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        assert target.stdout.readline() == "ready\n"
        result = subprocess.run([*DIAG, "dump", "--pid", str(target.pid), "--json"],
                                capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
        shown = subprocess.run([*DIAG, "dump", "--pid", str(target.pid)],
                               capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
        text = shown.stdout
    finally:
        target.kill()
        target.wait()
        target.stdout.close()
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["pid"] == target.pid
    first = document["owners"][0]
    assert first["path"] == "__main__._AUDIO_CACHE"
    assert first["kind"] == "dict"
    assert first["objects"] == 500
    assert first["retained_bytes"] == 500 * 4096 * 4
    (content,) = first["contents"]
    assert content == {"type": "torch.Tensor float32", "device": "cpu", "count": 500,
                       "bytes": 500 * 4096 * 4}  # fmt: skip
    assert "__main__._AUDIO_CACHE  dict, 500 entries, retains 7.8 MiB" in text
    assert "500 × torch.Tensor float32 cpu (16.0 KiB each)" in text
    assert "__main__.view  Tensor, retains 16.0 KiB" in text  # a global: named by its variable


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
