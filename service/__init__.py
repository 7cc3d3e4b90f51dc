"""BrainSynth HTTP API (FastAPI). Never imports torch or ``models``; built in the service issue."""
