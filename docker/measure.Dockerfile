# A SAMSEG measuring worker: CPU only, no torch; SAMSEG (PyPI samseg, its atlas inside the wheel) pins numpy < 2,
# so it is an image and an environment of its own. One solo-pool Celery process on the "measure" queue.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md /src/
COPY brainsynth /src/brainsynth
COPY models /src/models
COPY jobs /src/jobs
COPY service /src/service
COPY worker /src/worker
WORKDIR /app
# The project from its wheel with the measure extra; the source is removed, so the image runs the installed package.
# hadolint ignore=DL3013
RUN pip install "/src[measure]" && rm -rf /src \
 && python -c "import sys, worker.measuring; assert 'torch' not in sys.modules" \
 && useradd --create-home --uid 10001 brainsynth
USER 10001
# SAMSEG threads per run (one run at a time per process): match the CPUs given to the container.
ENV BRAINSYNTH_SAMSEG_THREADS=4 BRAINSYNTH_HEARTBEAT_FILE=/tmp/brainsynth-heartbeat
HEALTHCHECK --interval=15s --timeout=5s --retries=3 CMD ["python", "-m", "worker.liveness", "/tmp/brainsynth-heartbeat"]
CMD ["celery", "-A", "worker.measure_app", "worker", "--pool=solo", "-Q", "measure", "--hostname=measure@%h", "--without-mingle", "--without-gossip", "--loglevel=INFO"]
