# The API server: FastAPI + the Celery client + S3 access. No torch (the API validates with torch-free code).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY brainsynth brainsynth
COPY models models
COPY jobs jobs
COPY service service
COPY worker worker
# The project without its torch/monai dependencies, then exactly what the API imports.
RUN pip install --no-deps . \
 && pip install "pydantic>=2.7" "pydantic-settings>=2.7" "numpy>=1.26" "nibabel>=5.2" "tqdm>=4.66" \
        "fastapi>=0.115" "uvicorn>=0.30" "httpx>=0.27" "celery[redis]>=5.5,<6" "redis>=5" "minio>=7.2,<8" \
        "fastapi-offline>=1.7" "prometheus-client>=0.20" \
 && python -c "import sys, service.app; assert 'torch' not in sys.modules" \
 && useradd --create-home --uid 10001 brainsynth
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# uvicorn's access log is off: it would write query strings (link tokens); the app logs each request itself
CMD ["uvicorn", "service.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", "--no-access-log"]
