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
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

log = logging.getLogger(__name__)
FLEET_PREFIX, HEALTH = "/v1/fleet/", "/health"
DEFAULT_MAX_REQUEST_MIB = 64
# Headers that belong to one connection, not to the request (RFC 9110 section 7.6.1), and those
# httpx sets itself for the forwarded request.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "host", "content-length", "content-encoding"})


class RequestTooLarge(Exception):
    pass


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


def passes(path: str) -> bool:
    """Whether a request path may reach the SuperLink from outside: the sites' API alone."""
    return path.startswith(FLEET_PREFIX) or path == HEALTH


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it (or its declared length) exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def gate_app(settings: GateSettings) -> Starlette:
    """The ASGI app: forward what ``passes`` to the SuperLink, refuse the rest."""
    verify: ssl.SSLContext | bool = False
    if settings.ca_certfile is not None:
        verify = ssl.create_default_context(cafile=str(settings.ca_certfile))
    client = httpx.AsyncClient(base_url=settings.upstream, verify=verify, timeout=httpx.Timeout(300.0))

    async def forward(request: Request) -> Response:
        path = request.url.path
        target = path + (f"?{request.url.query}" if request.url.query else "")
        # httpx removes dot segments when it builds the upstream URL (/v1/fleet/../control/... becomes
        # /v1/control/...): the path the SuperLink would see is the one that must pass
        upstream_path = client.build_request(request.method, target).url.path
        if not (passes(path) and passes(upstream_path)):
            log.warning("fleet gate: refused %s %s from %s", request.method, path,
                        request.client.host if request.client else "?")
            return PlainTextResponse("this port serves the sites' Fleet API only\n", status_code=403)
        try:
            body = await read_body(request, settings.max_request_bytes)
        except RequestTooLarge:
            log.warning("fleet gate: refused a request to %s over %d bytes", path, settings.max_request_bytes)
            return PlainTextResponse(f"request larger than {settings.max_request_bytes} bytes\n", status_code=413)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        try:
            answer = await client.request(request.method, target, content=body, headers=headers)
        except httpx.TransportError:
            return PlainTextResponse("the SuperLink is not answering\n", status_code=502)
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        return Response(answer.content, status_code=answer.status_code, headers=kept)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


class ThreadedServer:
    """An ASGI app served by uvicorn on a thread of this process (TLS when given a certificate)."""

    def __init__(self, app: ASGIApp, host: str, port: int, *, certfile: Path | None = None,
                 keyfile: Path | None = None) -> None:
        self.where = f"{host}:{port}"
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
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
                          keyfile=settings.keyfile)
