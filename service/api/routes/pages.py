"""The web page (``/``, plain HTML/CSS/JS from ``service/web``, no build step) and the API document's
Swagger UI (``/docs``) and ReDoc (``/redoc``), all served from the package: they work without internet."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
DOCS_ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
#: The page may load its own scripts, styles and images and call its own origin; nothing else.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
#: Swagger UI and ReDoc set inline styles and draw with data: and blob: URLs (no inline scripts).
DOCS_CSP = (
    "default-src 'none'; script-src 'self' blob:; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; worker-src blob:; font-src 'self' data:; base-uri 'none'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


def _html(name: str, policy: str) -> FileResponse:
    return FileResponse(WEB_DIR / name, headers={"Content-Security-Policy": policy, "Cache-Control": "no-cache"})


@router.get("/")
async def page() -> FileResponse:
    """The web page: sign in, design and watch cohorts, previews, downloads (all through /v1)."""
    return _html("index.html", PAGE_CSP)


@router.get("/docs")
async def docs() -> FileResponse:
    """Swagger UI for /openapi.json, from local assets."""
    return _html("docs.html", DOCS_CSP)


@router.get("/redoc")
async def redoc() -> FileResponse:
    """ReDoc for /openapi.json, from local assets."""
    return _html("redoc.html", DOCS_CSP)


def mount_assets(app: FastAPI) -> None:
    """Serve the page's files under ``/web`` and Swagger UI's and ReDoc's under ``/docs-assets``."""
    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")
