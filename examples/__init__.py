"""Reference services for diag: a small torch TTS model served by FastAPI, once with the
seed story's leak (``tts_service``) and once fixed (``tts_service_fixed``), and the load
generator that drives them (``loadgen``)."""
