"""`diag demo`, the README's main command, end to end: it is also the project's broadest test.

A real uvicorn service under `diag run` in a real memory cgroup, a real load generator, the
detector, the dump and a real OOM kill. Without a terminal it runs non-interactively.
"""

import itertools
import re
import subprocess

import pytest

from tests.conftest import DIAG, child_env


@pytest.mark.e2e
def test_the_demo_detects_names_and_explains_the_leak():
    result = subprocess.run([*DIAG, "demo"], capture_output=True, text=True, timeout=180,
                            env=child_env())  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, result.stderr + out[-3000:]
    assert "!! the detector calls a leak" in out and "out of memory in" in out
    assert "examples.tts_service._AUDIO_CACHE  dict" in out
    assert "allocated at tts_model.py" in out and "synthesize()" in out
    assert "ended: oom-kill" in out  # under a memory cgroup (make test runs as root)
    assert "diag report" in out
    assert "the leak was detected, its holder named" in out
    # The verdict, tick by tick: once the leak is called it stays called to the OOM kill.
    states = re.findall(r"^\d\d:\d\d:\d\d pid \d+ RSS .*? (\w+) \(", out, re.MULTILINE)
    assert "leak" in states
    after = states[states.index("leak") :]
    changes = sum(a != b for a, b in itertools.pairwise(after))
    assert changes <= 1, after
