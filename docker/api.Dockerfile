# The API server: FastAPI + the Celery client + S3 access. No torch (the API validates with torch-free code).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# The project from its wheel with the api extra (no torch, no MONAI): the dependency list lives in pyproject.toml
# alone. The source is removed after the install, so the image runs the installed package, as users do.
COPY pyproject.toml README.md /src/
COPY brainsynth /src/brainsynth
COPY models /src/models
COPY jobs /src/jobs
COPY service /src/service
COPY worker /src/worker
WORKDIR /app
# hadolint ignore=DL3013
RUN pip install "/src[api]" && rm -rf /src \
 && python -c "import sys, service.app; assert 'torch' not in sys.modules" \
 && useradd --create-home --uid 10001 brainsynth
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# uvicorn's access log is off: it would write query strings (link tokens); the app logs each request itself
CMD ["uvicorn", "service.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", "--no-access-log"]
