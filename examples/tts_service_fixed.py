"""The fixed twin of ``examples.tts_service``: the same model and endpoints, but the audio
cache is a bounded LRU, so memory plateaus once it holds ``TTS_CACHE_ENTRIES`` (default 32).

    python -m examples.tts_service_fixed --port 8000
    python -m uvicorn examples.tts_service_fixed:app --port 8000
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch

from examples.tts_model import make_app, serve
from probes.requests import ASGIMiddleware

DEFAULT_CACHE_ENTRIES = 32


class LRUCache(OrderedDict[str, torch.Tensor]):
    """A dict that forgets its least recently stored entries beyond ``max_entries``.

    Not locked itself: ``make_app`` stores under its own lock, which covers the eviction."""

    def __init__(self, max_entries: int) -> None:
        super().__init__()
        if max_entries < 1:
            raise ValueError(f"the cache needs at least one entry, not {max_entries}")
        self.max_entries = max_entries

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.max_entries:
            self.popitem(last=False)


_AUDIO_CACHE = LRUCache(int(os.environ.get("TTS_CACHE_ENTRIES", DEFAULT_CACHE_ENTRIES)))

app = make_app(_AUDIO_CACHE, title="tts (fixed)")
app.add_middleware(ASGIMiddleware)  # diag's request counters, per route (endpoint="/talk")


if __name__ == "__main__":
    serve("examples.tts_service_fixed:app")
