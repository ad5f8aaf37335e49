"""The ASGI application the web server runs (gunicorn.conf.py: uvicorn workers).

Django runs each request's synchronous code (middleware, DRF views, the ORM) on a thread of its
own, which lives as long as the response: a progress stream would hold one for its whole life,
and every request would open a database connection of its own. This handler runs it instead on
the process's one synchronous thread, as a sync worker would, with its persistent connection;
what waits (progress streams) waits as coroutines beside it. So a worker process serves one
ordinary request at a time: WEB_CONCURRENCY processes share the cores.

Two bounds no middleware can keep, because Django reads a request's whole body (into memory, then
a temporary file) before the first middleware runs, and waits as long as a client takes to read:

- A body larger than UPLOAD_MAX_BYTES is never read. Declared so by its Content-Length, Django is
  given an empty one and the request_body_limit middleware refuses it by the header (an admin form
  gets its page back with the message); a chunked body is counted as it arrives and cut off with
  413 once past the limit. Either way the connection is then closed, not drained.
- A client that takes no part of its response for WEB_SEND_TIMEOUT seconds (it stopped reading)
  is treated as gone: the response is closed, which ends an export or a stream and frees what it
  held, and the server drops the connection.
"""

import asyncio
import contextlib
import logging
import os

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.http import FileResponse, HttpResponseBase
from django.urls import set_script_prefix

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eventproject.settings")

logger = logging.getLogger("eventproject.asgi")


class BodyTooLarge(Exception):
    """A chunked request body grew past UPLOAD_MAX_BYTES."""


class Handler(ASGIHandler):
    def load_middleware(self, is_async=False):
        # Every view and nearly every middleware here is synchronous: the chain is built as a sync
        # server builds it and entered once on the synchronous thread (respond below).
        # Built for async, Django would cross between that thread and the event loop several
        # times a request (a sync middleware before an async-capable one, then the view).
        super().load_middleware(is_async=False)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        limit = settings.UPLOAD_MAX_BYTES
        declared = declared_length(scope)
        refused = declared is not None and declared > limit
        send = closing_after(send) if refused else send
        try:
            # No ThreadSensitiveContext: one sync thread.
            await self.handle(
                scope,
                no_body(receive) if refused else counted(receive, limit),
                timed(send, settings.WEB_SEND_TIMEOUT, scope),
            )
        except BodyTooLarge:
            from .middleware import body_too_large  # imports Django's apps: not before setup

            await self.send_response(body_too_large(scope.get("path", "")), closing_after(send))

    async def handle(self, scope, receive, send):
        """Django's handle() crosses to the synchronous thread three times a request (the
        request_started signal, the response, its close); each crossing costs about 0.1 ms of CPU,
        a third of a 304's. Here an ordinary response crosses once; a streaming one once more, to
        be closed after its last part, and it ends when its client disconnects, as in Django."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        response = await sync_to_async(self.respond, thread_sensitive=True)(scope, body_file)
        if response.streaming:
            await self.stream(response, receive, send)
        else:
            with contextlib.suppress(asyncio.CancelledError):  # the client stopped reading (timed)
                await self.send_response(response, send)
        body_file.close()

    def respond(self, scope, body_file) -> HttpResponseBase:
        """On the synchronous thread: the request's signals and its response, closed (which sends
        request_finished) unless it streams. Its content is already whole: closing first is safe."""
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, refusal = self.create_request(scope, body_file)
        response = self.get_response(request) if request is not None else refusal
        assert response is not None  # create_request gives a request or the response refusing it
        response._handler_class = self.__class__  # type: ignore[attr-defined]  # request_finished's sender
        if isinstance(response, FileResponse):
            response.block_size = self.chunk_size  # the server chunks: larger reads
        if not response.streaming:
            response.close()
        return response

    async def stream(self, response, receive, send) -> None:
        """Send a streaming response until it ends or its client disconnects, then close it (also
        when sending failed: what it holds, a stream's slot say, is given back)."""
        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(self.send_response(response, send)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, RequestAborted):
                    await task
        finally:
            await sync_to_async(response.close, thread_sensitive=True)()


def declared_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses it before us
    return None


def no_body(receive):
    """A receive that hands Django an empty body without reading the real one, then waits (for
    ever: Django cancels it once the response is sent) instead of reading on."""
    told = False

    async def receive_nothing():
        nonlocal told
        if not told:
            told = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()

    return receive_nothing


def counted(receive, limit: int):
    """A receive that raises BodyTooLarge as soon as the body read so far passes `limit`."""
    seen = 0

    async def receive_counted():
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise BodyTooLarge
        return message

    return receive_counted


def closing_after(send):
    """A send that adds `Connection: close` to the response: the server then closes the connection
    after it instead of reading the rest of a refused body to reach the next request."""

    async def send_closing(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
        await send(message)

    return send_closing


def timed(send, seconds: float, scope):
    """A send that gives up after `seconds` (the client has stopped reading) as if the client had
    gone: Django then closes the response (an export's or a stream's resources are freed), and the
    server closes the connection."""

    async def send_timed(message):
        try:
            async with asyncio.timeout(seconds):
                await send(message)
        except TimeoutError:
            logger.warning(
                "%s %s: the client read nothing for %g s (WEB_SEND_TIMEOUT); closing its response",
                scope.get("method"),
                scope.get("path"),
                seconds,
            )
            raise asyncio.CancelledError from None

    return send_timed


def _application() -> Handler:
    import django

    django.setup(set_prefix=False)
    return Handler()


application = _application()
