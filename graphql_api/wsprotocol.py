"""uvicorn's websocket protocol, holding less per connection while it stays open.

A server with thousands of idle subscribers pays every per-connection byte thousands of times. Compared
with uvicorn's own ``websockets-sansio`` protocol, this one:

- forgets the handshake once the websocket is accepted: uvicorn keeps the request and response it
  answered the upgrade with, and the ``websockets`` parser keeps the request until the connection ends,
  both with their headers (~4 KiB) which nothing reads again (the ASGI scope has its own copy);
- waits with futures allocated only while a task waits: ``asyncio.Queue`` (the inbox of messages
  received) and ``asyncio.Event`` (whether the socket can be written to) keep four empty deques of
  ~0.7 KiB each.

It also offers the application a synchronous text send (:meth:`LeanWebSocketProtocol.send_text_now`,
in the scope's ``extensions`` under :data:`SEND_TEXT_NOW`), so that one loop can write the same event to
thousands of sockets without a task wake-up per socket. It declines (returns False) whenever the
ordinary ``send`` would wait or fail: not accepted yet, closing, or the transport's buffer above its high
water mark (the caller then sends the ordinary way, which waits, so a slow client stays bounded).

Everything else (limits, keep-alive pings, closing) is uvicorn's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn._types import ASGIReceiveEvent, ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.http11 import Request

SEND_TEXT_NOW = "wml.send_text_now"  # scope extension: ``send_text_now(text) -> bool``


class _Wakeable:
    """Futures of the tasks waiting, in a list that exists only while some task waits."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] | None = None

    async def _sleep(self) -> None:
        """Wait until the next ``_wake`` (or cancellation)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        waiters = self._waiters
        waiters.append(future)
        try:
            await future
        finally:
            waiters.remove(future)
            if not waiters:
                self._waiters = None

    def _wake(self) -> None:
        for future in self._waiters or ():
            if not future.done():
                future.set_result(None)


class Inbox(_Wakeable):
    """The part of ``asyncio.Queue`` uvicorn's protocol uses (``put_nowait``, ``get``, ``empty``)."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        super().__init__()
        self._items: list[ASGIReceiveEvent] = []

    def put_nowait(self, item: ASGIReceiveEvent) -> None:
        self._items.append(item)
        self._wake()  # every waiter checks again: none misses an item if another one is cancelled

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> ASGIReceiveEvent:
        while not self._items:
            await self._sleep()
        return self._items.pop(0)


class Flag(_Wakeable):
    """``asyncio.Event`` (``set``, ``clear``, ``is_set``, ``wait``)."""

    __slots__ = ("_is_set",)

    def __init__(self) -> None:
        super().__init__()
        self._is_set = False

    def is_set(self) -> bool:
        return self._is_set

    def set(self) -> None:
        self._is_set = True
        self._wake()

    def clear(self) -> None:
        self._is_set = False

    async def wait(self) -> bool:
        if not self._is_set:
            await self._sleep()
        return True


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol without the handshake kept and with lighter waiting."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox()  # type: ignore[assignment]  # the same methods, used the same way
        self.writable = Flag()  # type: ignore[assignment]
        self.writable.set()

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # none when the upgrade was refused
        if scope is not None:
            scope.setdefault("extensions", {})[SEND_TEXT_NOW] = self.send_text_now

    def send_text_now(self, text: str) -> bool:
        """Write a text message at once; False (nothing written) when ``send`` would wait or fail."""
        if (
            self.close_sent
            or not self.handshake_complete
            or self.initial_response is not None
            or not self.writable.is_set()
            or self.transport.is_closing()
        ):
            return False
        try:
            self.conn.send_text(text.encode())
        except InvalidState:
            return False
        self.transport.write(b"".join(self.conn.data_to_send()))
        return True

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete and hasattr(self, "response"):
            # The upgrade is answered: its request (also held by the websockets parser until the
            # connection ends) and response are never read again.
            self.request.headers.clear()
            del self.request, self.response
