"""The API's middleware: security headers on every response, CORS for the origins an operator lists, and the
request metrics and log line (:class:`service.metrics.RequestMetricsAndLog`)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import ApiMetrics, RequestMetricsAndLog
from service.settings import ServiceSettings

#: Sent with every response: the API serves JSON and downloads, never pages to frame or scripts to run.
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` (and ``Cache-Control: no-store`` where a route set
    none) to every HTTP response, streaming ones included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                if b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def add_middleware(app: FastAPI, settings: ServiceSettings, metrics: ApiMetrics) -> None:
    """CORS (only ``settings.cors_origins``; a preflight from any other origin is answered 400), security
    headers, and the request metrics and log (outermost, so it sees every answer)."""
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        expose_headers=["Location", "Retry-After"],
        max_age=600,
    )
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestMetricsAndLog, metrics=metrics)
