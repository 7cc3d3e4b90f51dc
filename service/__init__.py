"""BrainSynth's service side: the HTTP API (FastAPI), its client, the local stack (Redis, SeaweedFS,
workers, API as processes). Never imports torch."""
