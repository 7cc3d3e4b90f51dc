# A GPU worker: CUDA runtime, torch built for CUDA, one solo-pool Celery process per GPU.
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# CUDA build of torch first (pinned), then the project with the worker's extras.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu126
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md /src/
COPY brainsynth /src/brainsynth
COPY models /src/models
COPY jobs /src/jobs
COPY service /src/service
COPY worker /src/worker
WORKDIR /app
# The project from its wheel with the worker extra; the source is removed, so the image runs the installed package.
# hadolint ignore=DL3013
RUN pip install "/src[worker]" && rm -rf /src \
 && useradd --create-home --uid 10001 brainsynth
USER 10001
# Model directories (model.json + weights) are mounted here; the shipped demo model is in the image.
ENV BRAINSYNTH_MODELS_DIR=/models BRAINSYNTH_HEARTBEAT_FILE=/tmp/brainsynth-heartbeat
# Alive when the heartbeat thread beat in the last 15 s (a busy solo worker cannot answer a Celery ping).
HEALTHCHECK --interval=15s --timeout=5s --retries=3 CMD ["python", "-m", "worker.liveness", "/tmp/brainsynth-heartbeat"]
CMD ["celery", "-A", "worker.celery_app", "worker", "--pool=solo", "--hostname=worker@%h", "--without-mingle", "--without-gossip", "--loglevel=INFO"]
