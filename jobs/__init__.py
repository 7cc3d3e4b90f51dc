"""The job layer shared by the API and the workers, torch-free: the task contract (payloads and names), cohort
state in Redis, object storage and its key layout, the Celery queue configuration, and the broker and storage
settings both sides extend. ``service/`` and ``worker/`` import it; it imports neither."""
