"""A small but real torch text-to-speech model, and the FastAPI app both reference services share.

The model is the shape of a real TTS stack shrunk to run in a millisecond or two on a CPU:
characters -> embedding -> a convolution (local context) -> a GRU (prosody over the sentence)
-> per-character voice parameters (pitch and harmonic amplitudes) -> upsampled to 16 kHz and
rendered by a harmonic oscillator. Its weights are seeded, not trained: the audio is a
deterministic hum, not speech, but every request allocates a real float32 audio tensor whose
size is what a real service's would be (``TTS_SAMPLES_PER_CHAR`` samples per character).

``make_app(cache)`` builds the HTTP service around ``synthesize``; ``examples.tts_service``
passes it a dict nothing empties (the leak) and ``examples.tts_service_fixed`` a bounded LRU.
This module deliberately does not import diag: it is the code under diagnosis.
"""

from __future__ import annotations

import math
import os
import threading
import uuid
from collections.abc import MutableMapping, Sequence

import torch
import torch.nn.functional as F
from fastapi import FastAPI
from pydantic import BaseModel, Field
from torch import nn

SAMPLE_RATE = 16_000
#: 256 samples (16 ms) per character: a 60-character sentence is ~1 s of audio, 61,440 bytes.
DEFAULT_SAMPLES_PER_CHAR = 256
VOCAB = 256  # Latin-1 code points; anything above shares the last id
SEED = 1234


def samples_per_char() -> int:
    """``TTS_SAMPLES_PER_CHAR``, read on every call so a test or a shell can change it."""
    raw = os.environ.get("TTS_SAMPLES_PER_CHAR", "")
    value = int(raw) if raw.strip() else DEFAULT_SAMPLES_PER_CHAR
    if value < 1:
        raise ValueError(f"TTS_SAMPLES_PER_CHAR must be a positive integer, not {raw!r}")
    return value


class TinyTTS(nn.Module):
    """Character ids in, an unshaped waveform (``len(ids) * samples_per_char`` floats) out."""

    overtones: torch.Tensor  # a buffer: 1..harmonics, the multiples of the pitch

    def __init__(self, dim: int = 64, harmonics: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.conv = nn.Conv1d(dim, dim, kernel_size=5, padding=2)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        # Per character: one pitch value and the amplitude of each harmonic.
        self.head = nn.Linear(dim, 1 + harmonics)
        self.register_buffer(
            "overtones", torch.arange(1, harmonics + 1, dtype=torch.float32)[:, None]
        )

    def forward(self, ids: torch.Tensor, samples_per_char: int) -> torch.Tensor:
        x = self.embed(ids).T.unsqueeze(0)  # (1, dim, chars)
        x = F.relu(self.conv(x)).transpose(1, 2)  # (1, chars, dim)
        x, _ = self.gru(x)
        frames = self.head(x).transpose(1, 2)  # (1, 1 + harmonics, chars)
        # Frame rate to sample rate: the vocoder's upsampling, linear so pitch glides.
        length = frames.shape[-1] * samples_per_char
        params = F.interpolate(frames, size=length, mode="linear")[0]
        pitch = 100.0 + 150.0 * torch.sigmoid(params[0])  # Hz, a speaking voice's range
        amplitudes = torch.softmax(params[1:], dim=0)
        phase = torch.cumsum(pitch, dim=0) * (2 * math.pi / SAMPLE_RATE)
        return (amplitudes * torch.sin(self.overtones * phase)).sum(dim=0)


def load_model(seed: int = SEED) -> TinyTTS:
    """The model with seeded weights, built without disturbing the global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyTTS()
    return model.eval().requires_grad_(False)


MODEL = load_model()


def encode(text: str) -> torch.Tensor:
    return torch.tensor([min(ord(c), VOCAB - 1) for c in text], dtype=torch.long)


def synthesize(text: str) -> torch.Tensor:
    """``text`` as a fresh 1-D float32 CPU waveform at 16 kHz, ``samples_per_char()`` per
    character. Deterministic: the same text gives the same samples."""
    spc = samples_per_char()
    with torch.inference_mode():
        if not text:
            audio = torch.zeros(0, dtype=torch.float32)
        else:
            wave = MODEL(encode(text), spc)
            # The returned tensor is made here, on purpose: `diag dump` names the function
            # that allocated a retained tensor, and for this story that must be synthesize.
            audio = torch.tanh(1.5 * wave) * 0.8
    return audio


# -- the HTTP service both reference services share ------------------------------------------


class TalkRequest(BaseModel):
    # Bounded, so one request cannot exhaust memory on its own: only an accumulation can.
    text: str = Field(min_length=1, max_length=2000)


class TalkResponse(BaseModel):
    id: str
    samples: int
    seconds: float


class CacheInfo(BaseModel):
    entries: int
    bytes: int


def make_app(cache: MutableMapping[str, torch.Tensor], title: str) -> FastAPI:
    """The app: ``POST /talk`` synthesizes and keeps the audio in ``cache`` (as if for a later
    download), ``GET /cache`` reports its size, ``GET /healthz`` answers once it serves.

    What the service leaks, or not, is entirely ``cache``'s eviction policy."""
    app = FastAPI(title=title)
    # The handlers are plain `def`s, so they run concurrently in the threadpool: one lock keeps
    # the cache from changing while /cache iterates it, and makes an LRU's evictions atomic.
    lock = threading.Lock()

    @app.post("/talk")
    def talk(request: TalkRequest) -> TalkResponse:
        audio = synthesize(request.text)
        request_id = uuid.uuid4().hex
        with lock:
            cache[request_id] = audio
        return TalkResponse(
            id=request_id, samples=audio.numel(), seconds=audio.numel() / SAMPLE_RATE
        )

    @app.get("/cache")
    def cache_info() -> CacheInfo:
        with lock:
            tensors = list(cache.values())
        return CacheInfo(entries=len(tensors), bytes=sum(t.nbytes for t in tensors))

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def serve(target: str, argv: Sequence[str] | None = None) -> None:
    """``python -m examples.tts_service[_fixed] [--host H] [--port P]``: one uvicorn worker.

    ``target`` is the app's import string, not the object: run with ``-m``, the service module
    is ``__main__``, and serving its import name instead keeps the cache at the name a
    ``diag dump`` should report (``examples.tts_service._AUDIO_CACHE``)."""
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(prog=f"python -m {target.partition(':')[0]}")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    uvicorn.run(target, host=args.host, port=args.port, workers=1, log_level="warning")
