"""A tiny TTS-like worker that leaks the way the seed story's service did.

Every "request" turns text into an audio tensor and keeps it in the module-level dict
``_AUDIO_CACHE`` that nothing ever empties. Run by ``diag demo`` under ``diag run``; it uses
torch when installed and plain bytearrays otherwise. Stops on SIGTERM.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

SAMPLE_RATE = 16_000
_AUDIO_CACHE: dict[str, Any] = {}


def synthesize(text: str) -> Any:
    seconds = 0.5 + len(text) / 40
    try:
        import torch
    except ImportError:
        return bytearray(int(seconds * SAMPLE_RATE) * 4)
    t = torch.arange(int(seconds * SAMPLE_RATE), dtype=torch.float32) / SAMPLE_RATE
    return torch.sin(2 * torch.pi * 220.0 * t) * torch.hann_window(t.numel())


def main(requests_per_second: float = 20.0) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    request = 0
    while not stop.wait(1 / requests_per_second):
        request += 1
        text = f"request {request}: hello from the digital human"
        _AUDIO_CACHE[f"req-{request}"] = synthesize(text)  # the leak: never evicted


if __name__ == "__main__":
    main()
