import subprocess

import pytest

from tests.conftest import DIAG, child_env


@pytest.mark.e2e
def test_the_small_demo_runs_and_sees_the_leak(tmp_path):
    result = subprocess.run([*DIAG, "demo", "--duration", "5"], capture_output=True, text=True,
                            timeout=120, env=child_env(DIAG_HISTORY=str(tmp_path)))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "diag.demo_service._AUDIO_CACHE" in result.stdout
    assert "RSS grew" in result.stdout
