"""The seed story's service: a TTS endpoint whose memory grows until the OOM killer ends it.

Every ``POST /talk`` keeps its audio tensor in the module-level dict ``_AUDIO_CACHE`` and
nothing ever removes it: ~60 KB per 60-character request, ~1.2 MB/s at 20 requests per second.
``examples.tts_service_fixed`` is the same service with the cache bounded.

    python -m examples.tts_service --port 8000
    python -m uvicorn examples.tts_service:app --port 8000
    diag run --port 9109 -- python -m uvicorn examples.tts_service:app --port 8000
"""

from __future__ import annotations

import torch

from examples.tts_model import make_app, serve
from probes.requests import ASGIMiddleware

# THE LEAK: every request's audio, keyed by request id, "for a later download" that never
# comes. Nothing evicts an entry, so the process grows by one audio tensor per request.
_AUDIO_CACHE: dict[str, torch.Tensor] = {}

app = make_app(_AUDIO_CACHE, title="tts (leaking)")
app.add_middleware(ASGIMiddleware)  # diag's request counters, per route (endpoint="/talk")


if __name__ == "__main__":
    serve("examples.tts_service:app")
