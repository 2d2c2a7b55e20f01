"""Running the service with uvicorn: ``wml serve`` in the foreground, or embedded in a running loop.

The embedded form (used by ``wml demo`` and the tests) binds its socket first, so port 0 works and the
public URL is known before the app starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette

from core.settings import Settings
from graphql_api.wsprotocol import LeanWebSocketProtocol
from wml.app import create_app
from wml.single import hold_sqlite, release


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _uvicorn_config(app: Starlette, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level=log_level.lower(),
        log_config=None,  # uvicorn's records go to the handler wml.logs sets up (JSON when asked)
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        # uvicorn's websockets-sansio protocol, holding less per open websocket (see graphql_api.wsprotocol).
        ws=LeanWebSocketProtocol,
        ws_max_size=1024 * 1024,  # the largest message accepted from a client
        # Per-message compression kept ~35 KiB of zlib state per websocket (a third of a subscriber's
        # memory) and CPU per event sent, for messages of a few hundred bytes.
        ws_per_message_deflate=False,
    )


# A server holding thousands of websocket subscribers has millions of long-lived objects; with Python's
# default thresholds, collections of the oldest generation scanned them all often enough to take a third
# of the CPU while events fan out (bench/fanout.py). Fewer young collections let short-lived objects die
# before being promoted, so full collections come far less often.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    gc.freeze()  # start-up's objects (modules, schema, app) live as long as the process: skip them
    gc.set_threshold(*GC_THRESHOLDS)


def serve(settings: Settings) -> None:
    """Serve until stopped. AlreadyServingError when another process serves the same SQLite database."""
    settings.secure_data_dir()
    serving = hold_sqlite(settings.resolved_database_url())  # held for the process's life
    try:
        sock = bind_socket(settings.host, settings.port)
        app = create_app(settings)
        tune_gc()
        server = uvicorn.Server(_uvicorn_config(app, settings.log_level))
        server.run(sockets=[sock])
    finally:
        release(serving)


@dataclass
class RunningServer:
    url: str
    settings: Settings
    server: uvicorn.Server
    app: Starlette


async def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
    # uvicorn ends a failed start-up with SystemExit, which must not escape a task in someone's loop.
    with contextlib.suppress(SystemExit):
        await server.serve(sockets=[sock])


@contextlib.asynccontextmanager
async def embedded_server(settings: Settings, log_level: str = "warning") -> AsyncIterator[RunningServer]:
    """Serve ``settings`` on its host (port 0: any free port) until the block ends."""
    sock = bind_socket(settings.host, settings.port)
    port = sock.getsockname()[1]
    settings = settings.model_copy(update={"port": port})
    if settings.public_url is None:
        settings = settings.model_copy(update={"public_url": f"http://{settings.host}:{port}"})
    app = create_app(settings)
    server = uvicorn.Server(_uvicorn_config(app, log_level))
    task = asyncio.create_task(_serve(server, sock))
    try:
        while not server.started:
            if task.done():
                raise RuntimeError("the server failed to start; its log says why")
            await asyncio.sleep(0.02)
        yield RunningServer(url=settings.resolved_public_url(), settings=settings, server=server, app=app)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()
