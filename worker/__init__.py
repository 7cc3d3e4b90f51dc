"""BrainSynth Celery workers that call ``models`` and write to object storage; built in the service issue."""
