"""Logging shared by the API and the workers: JSON lines (one object per event) or plain text, with the
context fields that tie events together (cohort_id, subject_id, tenant, worker, and the request's method,
route, status and seconds), from ``BRAINSYNTH_LOG_FORMAT``.

No secret is ever logged: callers log route templates (never URLs with their query, which may hold a link
token) and tenant names (never keys), and every message is scrubbed of ``Bearer`` credentials and
``token=`` values as a last line of defence.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import time
from typing import Any, Literal

LogFormat = Literal["json", "text"]
#: ``extra=`` fields copied into each JSON line when present.
CONTEXT_FIELDS = ("cohort_id", "subject_id", "tenant", "method", "route", "status", "seconds", "write_seconds",
                  "failure", "client")  # fmt: skip
_SECRETS = re.compile(r"(Bearer\s+)\S+|((?:token|api_key|key)=)[^&\s\"']+", re.IGNORECASE)


def scrub(text: str) -> str:
    """``text`` with bearer credentials and ``token=``/``key=`` values replaced by ``***``."""
    return _SECRETS.sub(lambda m: (m.group(1) or m.group(2)) + "***", text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, worker, context fields."""

    def __init__(self, worker: str) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub(record.getMessage()),
            "worker": self.worker,
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class ScrubbingFormatter(logging.Formatter):
    """The plain-text format, scrubbed of credentials too."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def configure_logging(log_format: LogFormat, level: int = logging.INFO) -> None:
    """Send the root logger's records to stderr in ``log_format`` (replacing earlier handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    if log_format == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        handler.setFormatter(ScrubbingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
