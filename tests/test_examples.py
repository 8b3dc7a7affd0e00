"""The reference TTS services (examples/): the model, the load generator, and both services run
under `diag run` for real: the leaking one's cache grows by one tensor per request, the fixed
one's stays at its bound, and the agent's /metrics counts the /talk requests."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from examples.loadgen import drive
from examples.tts_model import DEFAULT_SAMPLES_PER_CHAR, SAMPLE_RATE, load_model, synthesize
from examples.tts_service_fixed import LRUCache
from tests.conftest import DIAG, REPO, child_env, free_port, log_of, poll, spawned

# A service's audio per request in these tests: 50 characters x 100 samples x 4 bytes.
TEXT = "The quick brown fox jumps over the lazy sleepy dog"
SAMPLES_PER_CHAR = 100
BYTES_PER_REQUEST = len(TEXT) * SAMPLES_PER_CHAR * 4

# -- the model -------------------------------------------------------------------------------


def test_synthesize_length_is_proportional_to_the_text(monkeypatch):
    monkeypatch.delenv("TTS_SAMPLES_PER_CHAR", raising=False)
    sentence = "Hello from the digital human: how can I help with your order"
    audio = synthesize(sentence)
    assert len(sentence) == 60
    assert audio.shape == (60 * DEFAULT_SAMPLES_PER_CHAR,)
    assert 0.9 < audio.numel() / SAMPLE_RATE < 1.1  # about a second of audio
    assert synthesize("abc").numel() * 4 == synthesize("abcdabcdabcd").numel()
    assert synthesize("").numel() == 0

    monkeypatch.setenv("TTS_SAMPLES_PER_CHAR", "37")
    assert synthesize("hello").shape == (5 * 37,)


def test_synthesize_returns_a_fresh_deterministic_float32_waveform():
    first, again = synthesize(TEXT), synthesize(TEXT)
    assert first.dtype == torch.float32 and first.device.type == "cpu" and first.dim() == 1
    assert first.is_contiguous() and first.untyped_storage().nbytes() == first.nbytes
    assert first.data_ptr() != again.data_ptr()  # a new tensor per call, not a shared buffer
    assert torch.equal(first, again)
    assert bool(torch.isfinite(first).all()) and float(first.abs().max()) <= 1.0
    assert float(first.std()) > 0.1  # a signal, not silence
    assert not torch.equal(first, synthesize(TEXT.upper()))  # the text shapes it
    # The weights are seeded: a second model is the same model.
    fresh = load_model()
    ids = torch.arange(40)
    with torch.inference_mode():
        assert torch.equal(fresh(ids, 8), load_model()(ids, 8))


def test_lru_cache_keeps_the_most_recently_stored():
    cache = LRUCache(2)
    for key in "abc":
        cache[key] = torch.zeros(1)
    assert list(cache) == ["b", "c"]
    cache["b"] = torch.ones(1)  # storing again makes it the newest
    cache["d"] = torch.zeros(1)
    assert list(cache) == ["b", "d"]


# -- the load generator ----------------------------------------------------------------------


def test_drive_counts_refused_connections_as_errors():
    nobody = f"http://127.0.0.1:{free_port()}"
    counts = drive(nobody, rate=20, duration=0.5)
    assert counts["requests"] == 10 and counts["errors"] == 10 and counts["ok"] == 0


@pytest.mark.e2e
def test_loadgen_cli_prints_a_summary_and_exits_0():
    nobody = f"http://127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "examples.loadgen", "--url", nobody, "--rate", "10"]
    done = subprocess.run(
        [*argv, "--duration", "0.5"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no traceback
    assert done.stdout.startswith("loadgen: 5 requests, 5 errors, mean latency")


# -- the services under the agent ------------------------------------------------------------


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _requests_total(metrics_url: str, endpoint: str) -> float | None:
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "diag_requests_total" and sample.labels == {"endpoint": endpoint}:
                return float(sample.value)
    return None


@contextlib.contextmanager
def _service(module: str, tmp_path: Path, **env: str) -> Iterator[tuple[str, str]]:
    """``examples.<module>:app`` under uvicorn under `diag run`; yields its base URL and the
    agent's /metrics URL once /healthz answers. Ended (terminated, else killed) and reaped."""
    port, metrics_port = free_port(), free_port()
    argv = [
        *DIAG, "run", "--port", str(metrics_port), "--interval", "0.5", "--",
        sys.executable, "-m", "uvicorn", f"examples.{module}:app",
        "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    log = tmp_path / f"{module}.log"
    with spawned(argv, log, cwd=REPO, env=child_env(**env)) as proc:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            if proc.poll() is not None:  # pytest.fail is not an Exception: poll lets it out
                pytest.fail(f"{module} exited ({proc.returncode}); stderr:\n{log_of(log)}")
            return bool(_get_json(f"{url}/healthz")["status"] == "ok")

        poll(healthy, timeout=30)
        yield url, f"http://127.0.0.1:{metrics_port}/metrics"


@pytest.mark.e2e
def test_leaking_service_keeps_every_requests_audio(tmp_path):
    env = {"TTS_SAMPLES_PER_CHAR": str(SAMPLES_PER_CHAR)}
    with _service("tts_service", tmp_path, **env) as (url, metrics):
        first = drive(url, rate=20, duration=2.0, text=TEXT)
        assert (first["ok"], first["errors"]) == (40, 0)
        assert first["samples"] == 40 * len(TEXT) * SAMPLES_PER_CHAR
        after_first = _get_json(f"{url}/cache")
        assert after_first == {"entries": 40, "bytes": 40 * BYTES_PER_REQUEST}

        second = drive(url, rate=20, duration=1.5, text=TEXT)
        assert (second["ok"], second["errors"]) == (30, 0)
        after_second = _get_json(f"{url}/cache")
        # Nothing was evicted: the cache only grows, one audio tensor per request.
        assert after_second == {"entries": 70, "bytes": 70 * BYTES_PER_REQUEST}
        assert after_second["bytes"] > after_first["bytes"]

        # The agent's request counters, per route: they reach /metrics on the next tick.
        assert poll(lambda: _requests_total(metrics, "/talk") == 70, timeout=10)


@pytest.mark.e2e
def test_fixed_service_cache_stays_at_its_bound(tmp_path):
    env = {"TTS_SAMPLES_PER_CHAR": str(SAMPLES_PER_CHAR), "TTS_CACHE_ENTRIES": "8"}
    with _service("tts_service_fixed", tmp_path, **env) as (url, metrics):
        counts = drive(url, rate=20, duration=1.0, text=TEXT)
        assert (counts["ok"], counts["errors"]) == (20, 0)
        assert _get_json(f"{url}/cache") == {"entries": 8, "bytes": 8 * BYTES_PER_REQUEST}
        counts = drive(url, rate=20, duration=1.0, text=TEXT)
        assert (counts["ok"], counts["errors"]) == (20, 0)
        assert _get_json(f"{url}/cache") == {"entries": 8, "bytes": 8 * BYTES_PER_REQUEST}
        assert poll(lambda: _requests_total(metrics, "/talk") == 40, timeout=10)
