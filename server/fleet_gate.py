"""The federation's public port serves the sites' Fleet API and nothing else.

Flower 1.42's SuperLink serves the Fleet API (sites), the Control API (``flwr run``, ``flwr ls``,
``flwr stop``) and the Runtime API on one HTTP port, and its open-source package authenticates
the Control API with a no-op plugin: anyone who can reach the sites' port could submit a run,
whose ServerApp would then execute on the server's machine. Flower cannot bind those APIs apart,
so ``omnirad-server`` runs the SuperLink on 127.0.0.1 and puts this gate on the public address:
it terminates TLS with the federation's server certificate and forwards ``/v1/fleet/*`` and
``/health`` to the SuperLink; every other path gets 403, and a request larger than
``max_request_bytes`` 413 before any of it reaches the SuperLink (Flower sends arrays in 5 MB
chunks, so a site never needs more). Written here because neither Flower nor its dependencies
ship a path-filtering proxy; it is Starlette and httpx, which Flower itself runs on.

What an unauthenticated client can make the gate do is bounded: a path httpx cannot send (``%00``,
``%1b``) is answered 400; the bodies buffered at once add up to ``max_buffered_bytes`` at most
(beyond it 503, so four 63 MiB bodies no longer double the gate's memory), and so do the pieces of
the SuperLink's answers it holds on their way out (an answer is relayed as it arrives, never held
whole; a piece waits for room rather than being dropped, since the SuperLink has already acted on
the request: pulled messages count as delivered); a connection must send
its request headers within ``header_timeout`` seconds and each piece of its body within
``body_timeout`` seconds, or it is closed; a redirect from the SuperLink never carries its loopback
address out (its ``Location`` is rewritten to the path alone, or the answer refused with 502).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp
from uvicorn.protocols.http.auto import AutoHTTPProtocol

log = logging.getLogger(__name__)
FLEET_PREFIX, HEALTH = "/v1/fleet/", "/health"
DEFAULT_MAX_REQUEST_MIB = 64
DEFAULT_MAX_BUFFERED_MIB = 256  # about 50 of Flower's 5 MB chunks in flight at once
DEFAULT_HEADER_TIMEOUT_S = 30.0
DEFAULT_BODY_TIMEOUT_S = 120.0  # the longest pause between two pieces of a request body
# Headers that belong to one connection, not to the request (RFC 9110 section 7.6.1), and those
# httpx sets itself for the forwarded request.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "host", "content-length", "content-encoding"})


class RequestTooLarge(Exception):
    pass


class GateBusy(Exception):
    """Buffering this body would take the gate over its ``max_buffered_bytes``."""


class BodyTooSlow(Exception):
    pass


def option_problems(*, max_request_mib: int, max_buffered_mib: int, header_timeout: float, body_timeout: float,
                    port: int) -> list[str]:
    """What is wrong with the gate's options, each named as ``omnirad-server`` spells it (empty: fine)."""
    problems = []
    if max_request_mib < 1:
        problems.append(f"--max-request-mib {max_request_mib}: must be at least 1 (Flower sends 5 MB chunks; 0 or "
                        "less would refuse every request, /health included)")
    if max_buffered_mib < max(1, max_request_mib):
        problems.append(f"--max-buffered-mib {max_buffered_mib}: must be at least --max-request-mib "
                        f"({max_request_mib}), or a request of the largest allowed size could never pass")
    for name, seconds in (("--header-timeout", header_timeout), ("--body-timeout", body_timeout)):
        if not 0 < seconds <= 3600:  # NaN too
            problems.append(f"{name} {seconds}: must be more than 0 and at most 3600 seconds")
    if not 1 <= port <= 65535:
        problems.append(f"--port {port}: must be between 1 and 65535")
    return problems


@dataclass(frozen=True)
class GateSettings:
    """Where the gate listens (``host``, ``port``), the SuperLink it forwards to (``upstream``, a
    base URL on 127.0.0.1), TLS files (None: plain HTTP, a local test) and the request size limit."""

    host: str
    port: int
    upstream: str
    certfile: Path | None = None
    keyfile: Path | None = None
    ca_certfile: Path | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_MIB << 20
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_MIB << 20
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S

    def __post_init__(self) -> None:
        if not (0 < self.max_request_bytes <= self.max_buffered_bytes and 0 < self.header_timeout <= 3600
                and 0 < self.body_timeout <= 3600 and 0 < self.port <= 65535):
            raise ValueError(f"fleet gate: unusable settings {self} (limits at least 1 byte, the buffer at least "
                             "one request, timeouts in (0, 3600] seconds)")


class BufferBudget:
    """The body bytes the gate holds at once, over all connections, requests and answers alike (the
    gate's one event loop touches it, so it needs no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0
        self._freed = asyncio.Event()  # set, and replaced, whenever bytes are given back

    def take(self, size: int) -> None:
        if self.held + size > self.limit:
            raise GateBusy
        self.held += size

    async def wait_to_take(self, size: int, timeout: float) -> None:
        """Take ``size`` bytes once they fit; ``GateBusy`` when they still do not after ``timeout`` s."""
        try:
            async with asyncio.timeout(timeout):
                while self.held + size > self.limit:
                    await self._freed.wait()
        except TimeoutError as err:
            raise GateBusy from err
        self.held += size

    def give_back(self, size: int) -> None:
        self.held -= size
        self._freed.set()
        self._freed = asyncio.Event()


def passes(path: str) -> bool:
    """Whether a request path may reach the SuperLink from outside: the sites' API alone."""
    return path.startswith(FLEET_PREFIX) or path == HEALTH


async def read_body(request: Request, limit: int, budget: BufferBudget | None = None,
                    pause: float | None = None) -> tuple[bytes, int]:
    """The request body and the bytes of ``budget`` it holds (give them back once it is sent on).
    Refused as soon as it (or its declared length) exceeds ``limit`` bytes (``RequestTooLarge``),
    would take the gate over its budget (``GateBusy``: a declared length is taken whole, before any
    of it is read) or pauses longer than ``pause`` seconds between two pieces (``BodyTooSlow``)."""
    budget = budget if budget is not None else BufferBudget(limit)
    declared = request.headers.get("content-length")
    held = 0
    if declared is not None and declared.isdigit():
        if int(declared) > limit:
            raise RequestTooLarge
        budget.take(int(declared))
        held = int(declared)
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), pause)
            except StopAsyncIteration:
                break
            except TimeoutError as err:
                raise BodyTooSlow from err
            size += len(chunk)
            if size > limit:
                raise RequestTooLarge
            if size > held:
                budget.take(size - held)
                held = size
            chunks.append(chunk)
    except BaseException:
        budget.give_back(held)
        raise
    return b"".join(chunks), held


def local_location(location: str, upstream: httpx.URL) -> str | None:
    """A redirect's target as a path on the gate, or None when it leads anywhere but the SuperLink's
    own Fleet API (the SuperLink's redirects name its loopback address, which stays inside)."""
    try:
        target = upstream.join(location)
    except httpx.InvalidURL:
        return None
    if (target.scheme, target.host, target.port) != (upstream.scheme, upstream.host, upstream.port):
        return None
    if not passes(target.path):
        return None
    return target.raw_path.decode("ascii")


class Relay(Response):
    """The SuperLink's answer, passed on piece by piece as it arrives: each piece counts against the
    gate's budget until the connection has taken it, and waits (up to ``pause`` seconds) for room
    rather than being refused, since the SuperLink has already acted on the request."""

    PIECE = 1 << 16

    def __init__(self, answer: httpx.Response, headers: dict[str, str], budget: BufferBudget, pause: float,
                 path: str) -> None:
        # not Response.__init__: it would add "content-length: 0" to an answer the SuperLink sent chunked
        self.status_code, self.background = answer.status_code, None
        self.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self.answer, self.budget, self.pause, self.path = answer, budget, pause, path

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for piece in self.answer.aiter_raw(min(self.PIECE, self.budget.limit)):
                await self.budget.wait_to_take(len(piece), self.pause)
                try:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                finally:
                    self.budget.give_back(len(piece))
        except GateBusy:  # the headers are out: all that is left is to end the connection short
            log.warning("fleet gate: no room for the SuperLink's answer to %s within %g s; connection closed",
                        self.path, self.pause)
            return
        except httpx.TransportError:
            log.warning("fleet gate: the SuperLink's answer to %s broke off; connection closed", self.path)
            return
        finally:
            await self.answer.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def gate_app(settings: GateSettings) -> Starlette:
    """The ASGI app: forward what ``passes`` to the SuperLink, refuse the rest."""
    verify: ssl.SSLContext | bool = False
    if settings.ca_certfile is not None:
        verify = ssl.create_default_context(cafile=str(settings.ca_certfile))
    client = httpx.AsyncClient(base_url=settings.upstream, verify=verify, timeout=httpx.Timeout(300.0))
    upstream, budget = httpx.URL(settings.upstream), BufferBudget(settings.max_buffered_bytes)

    async def forward(request: Request) -> Response:
        path = request.url.path
        target = path + (f"?{request.url.query}" if request.url.query else "")
        try:
            # httpx removes dot segments when it builds the upstream URL (/v1/fleet/../control/... becomes
            # /v1/control/...): the path the SuperLink would see is the one that must pass
            upstream_path = client.build_request(request.method, target).url.path
        except httpx.InvalidURL:  # a control character (%00, %1b) decoded into the path, say
            return PlainTextResponse("the request's path is not a valid URL path\n", status_code=400)
        if not (passes(path) and passes(upstream_path)):
            log.warning("fleet gate: refused %s %s from %s", request.method, path,
                        request.client.host if request.client else "?")
            return PlainTextResponse("this port serves the sites' Fleet API only\n", status_code=403)
        try:
            body, held = await read_body(request, settings.max_request_bytes, budget, settings.body_timeout)
        except RequestTooLarge:
            log.warning("fleet gate: refused a request to %s over %d bytes", path, settings.max_request_bytes)
            return PlainTextResponse(f"request larger than {settings.max_request_bytes} bytes\n", status_code=413)
        except GateBusy:
            log.warning("fleet gate: refused a request to %s: %d bytes of requests already buffered", path,
                        budget.held)
            return PlainTextResponse("the gate is buffering as many requests as it may; try again shortly\n",
                                     status_code=503, headers={"retry-after": "1"})
        except BodyTooSlow:
            return PlainTextResponse(f"no part of the request body for {settings.body_timeout:g} s\n",
                                     status_code=408)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        try:  # returns with the answer's headers, the request body sent: its bytes go back to the budget
            answer = await client.send(client.build_request(request.method, target, content=body, headers=headers),
                                       stream=True)
        except httpx.InvalidURL:
            return PlainTextResponse("the request's path is not a valid URL path\n", status_code=400)
        except httpx.TransportError:
            return PlainTextResponse("the SuperLink is not answering\n", status_code=502)
        finally:
            del body
            budget.give_back(held)
        # the body passes as the SuperLink sent it (still encoded), so its length and encoding stay
        kept = {k: v for k, v in answer.headers.items()
                if k.lower() not in HOP_BY_HOP or k.lower() in ("content-length", "content-encoding")}
        if answer.is_redirect or "location" in answer.headers:
            location = local_location(answer.headers.get("location", ""), upstream)
            if location is None:
                await answer.aclose()
                log.warning("fleet gate: refused the SuperLink's %d to %s for %s", answer.status_code,
                            answer.headers.get("location"), path)
                return PlainTextResponse("the SuperLink answered with a redirect the gate does not pass on\n",
                                         status_code=502)
            kept = {k: v for k, v in kept.items() if k.lower() not in ("location", "content-location")}
            kept["location"] = location
        return Relay(answer, kept, budget, settings.body_timeout, path)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


def header_deadline(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools, else h11) with a deadline for request headers: uvicorn
    times out an idle kept-alive connection, but a connection that sent part of its headers, or
    nothing at all, it holds for ever. The deadline is armed when a connection opens and after each
    response, and disarmed when the next request's headers are complete (uvicorn then starts a new
    request cycle); a connection still without them at the deadline is closed."""
    base: Any = AutoHTTPProtocol

    class HeaderDeadline(base):  # type: ignore[misc, valid-type]
        _timer: asyncio.TimerHandle | None = None
        _after: object = None

        def _arm(self) -> None:
            self._disarm()
            self._after = self.cycle
            self._timer = self.loop.call_later(seconds, self._late)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _late(self) -> None:
            self._timer = None
            if self.cycle is self._after and not self.transport.is_closing():
                log.warning("fleet gate: closed a connection from %s that sent no complete request headers in %g s",
                            self.client[0] if self.client else "?", seconds)
                self.transport.close()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._timer is not None and self.cycle is not self._after:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadline


class ThreadedServer:
    """An ASGI app served by uvicorn on a thread of this process (TLS when given a certificate;
    request headers due within ``header_timeout`` seconds of a connection or a response)."""

    def __init__(self, app: ASGIApp, host: str, port: int, *, certfile: Path | None = None,
                 keyfile: Path | None = None, header_timeout: float = DEFAULT_HEADER_TIMEOUT_S) -> None:
        self.where = f"{host}:{port}"
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                                http=header_deadline(header_timeout),
                                ssl_certfile=str(certfile) if certfile else None,
                                ssl_keyfile=str(keyfile) if keyfile else None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"http-{self.where}", daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"could not listen on {self.where} (is the port in use?)")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def fleet_gate(settings: GateSettings) -> ThreadedServer:
    """The gate on a thread of ``omnirad-server``: started after the SuperLink, stopped with it."""
    return ThreadedServer(gate_app(settings), settings.host, settings.port, certfile=settings.certfile,
                          keyfile=settings.keyfile, header_timeout=settings.header_timeout)
