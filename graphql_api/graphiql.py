"""GraphiQL that works in a closed network: its browser files are served by the app, not a CDN.

Strawberry's GraphiQL page loads React, GraphiQL and the explorer plugin from unpkg.com.
``scripts/get-graphiql`` installs exactly those files (same versions; their integrity hashes match)
into ``<prefix>/share/wml-graphiql``; when they are there, the page is rewritten to load them from
``/graphiql/vendor/`` and the browser needs nothing but this service. Without them (or with
``WML_GRAPHIQL=false``) GraphiQL is off: the page is never pointed at a CDN.
"""

from __future__ import annotations

import sys
from pathlib import Path

import structlog
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from core.settings import Settings

log = structlog.get_logger("wml.graphiql")
CDN = "https://unpkg.com/"
VENDOR_PATH = "/graphiql/vendor"


def assets_dir(settings: Settings) -> Path | None:
    """Where the GraphiQL files are: the setting, else the Python prefix's share directory."""
    directory = settings.graphiql_assets_dir or Path(sys.prefix) / "share" / "wml-graphiql"
    return directory if (directory / "graphiql@3.8.3").is_dir() else None


def graphiql_enabled(settings: Settings) -> bool:
    """Whether to serve GraphiQL: asked for, and its files installed (no CDN is ever used)."""
    if not settings.graphiql:
        return False
    if assets_dir(settings) is None:
        log.warning("GraphiQL is off: its files are not installed (run scripts/get-graphiql)")
        return False
    return True


def offline_page(html: str, directory: Path) -> str:
    return html.replace(CDN, VENDOR_PATH + "/")


def graphiql_routes(settings: Settings) -> list[BaseRoute]:
    directory = assets_dir(settings)
    if not settings.graphiql or directory is None:
        return []
    return [Mount(VENDOR_PATH, app=StaticFiles(directory=directory), name="graphiql-vendor")]
