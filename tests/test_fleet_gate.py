"""The public port passes the sites' Fleet API through to the SuperLink unchanged and refuses the
Control and Runtime APIs and oversized requests before they reach it (on 127.0.0.1, plain HTTP:
the end-to-end deployment tests run the same gate with TLS in front of a real SuperLink)."""

import asyncio
import concurrent.futures
import http.client
import socket
import threading
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, StreamingResponse
from starlette.routing import Route

from omnirad_fl.server.fleet_gate import GateSettings, ThreadedServer, fleet_gate
from omnirad_fl.server.processes import free_loopback_port

LIMIT = 1 << 16


class Recorder:
    """A stand-in SuperLink that answers every request with what it received."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.port = 0

    async def answer(self, request: Request) -> JSONResponse | RedirectResponse:
        body = await request.body()
        self.seen.append(request.url.path)
        if request.url.path.endswith("/") and len(request.url.path) > 1:  # as Starlette's redirect_slashes does
            return RedirectResponse(str(request.url).rstrip("/"), status_code=307)
        if request.url.path.endswith("to-control"):
            return RedirectResponse(str(request.url.replace(path="/v1/control/start-run")), status_code=307)
        return JSONResponse({"path": request.url.path, "query": request.url.query, "bytes": len(body),
                             "signature": request.headers.get("x-signature")},
                            status_code=401 if request.url.path.endswith("unauthorised") else 200,
                            headers={"x-upstream": "superlink"})


@pytest.fixture
def gate():
    recorder, upstream_port, public_port = Recorder(), free_loopback_port(), free_loopback_port()
    recorder.port = upstream_port
    app = Starlette(routes=[Route("/{path:path}", recorder.answer, methods=["GET", "POST"])])
    stand_in = ThreadedServer(app, "127.0.0.1", upstream_port)
    stand_in.start()
    front = fleet_gate(GateSettings("127.0.0.1", public_port, f"http://127.0.0.1:{upstream_port}", max_request_bytes=LIMIT))
    front.start()
    with httpx.Client(base_url=f"http://127.0.0.1:{public_port}", timeout=30) as client:
        yield client, recorder
    front.stop()
    stand_in.stop()


def test_the_sites_api_passes_through_unchanged(gate):
    client, recorder = gate
    answer = client.post("/v1/fleet/pull-messages?x=1", content=b"\x00" * 5000, headers={"x-signature": "abc"})
    assert answer.status_code == 200 and answer.headers["x-upstream"] == "superlink"
    assert answer.json() == {"path": "/v1/fleet/pull-messages", "query": "x=1", "bytes": 5000, "signature": "abc"}
    assert client.post("/v1/fleet/unauthorised").status_code == 401  # the SuperLink's own answer comes back
    assert client.get("/health").status_code == 200
    assert recorder.seen == ["/v1/fleet/pull-messages", "/v1/fleet/unauthorised", "/health"]


@pytest.mark.parametrize("path", ["/v1/control/start-run", "/v1/control/list-runs", "/v1/runtime/pull-app-inputs",
                                  "/docs", "/v1/fleetx/x", "/"])
def test_the_control_and_runtime_apis_never_reach_the_superlink(gate, path):
    client, recorder = gate
    answer = client.post(path, content=b"{}")
    assert answer.status_code == 403 and "Fleet API only" in answer.text
    assert recorder.seen == []


def test_a_path_that_climbs_out_of_the_fleet_api_is_refused(gate):
    client, recorder = gate
    port = client.base_url.port
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # sends the path exactly as written
    connection.request("POST", "/v1/fleet/../control/start-run", body=b"{}")
    assert connection.getresponse().status == 403
    connection.close()
    assert recorder.seen == []


def test_a_request_over_the_limit_is_refused_before_the_superlink_sees_it(gate):
    client, recorder = gate
    assert client.post("/v1/fleet/push-object", content=b"\x00" * LIMIT).status_code == 200
    assert client.post("/v1/fleet/push-object", content=b"\x00" * (LIMIT + 1)).status_code == 413

    def chunks():  # no declared length: counted as it streams in
        for _ in range(LIMIT // 1024 + 1):
            yield b"\x00" * 1024

    assert client.post("/v1/fleet/push-object", content=chunks()).status_code == 413
    assert recorder.seen == ["/v1/fleet/push-object"]


# Issue 32, item 7: what an unauthenticated client can make the gate do is bounded.

def raw_request(port: int, request: bytes) -> bytes:
    """Send bytes exactly as written; the answer's first line (empty when the gate closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(request)
        return connection.makefile("rb").readline()


@pytest.mark.parametrize("path", ["/v1/fleet/pull-messages%00", "/v1/fleet/%1b[31m", "/health%0d%0aX: y"])
def test_a_path_httpx_cannot_send_is_answered_400_not_500(gate, path):
    client, recorder = gate
    status = raw_request(client.base_url.port, f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    assert status.startswith(b"HTTP/1.1 400"), status
    assert recorder.seen == []


def test_a_redirect_never_carries_the_superlinks_loopback_address_out(gate):
    client, recorder = gate
    answer = client.post("/v1/fleet/pull-messages/", content=b"{}")  # the stand-in redirects trailing slashes
    assert answer.status_code == 307
    assert answer.headers["location"] == "/v1/fleet/pull-messages"
    assert str(recorder.port) not in answer.text + str(answer.headers)
    answer = client.post("/v1/fleet/to-control", content=b"{}")  # a redirect out of the Fleet API is not passed on
    assert answer.status_code == 502 and "location" not in answer.headers
    assert str(recorder.port) not in answer.text


@pytest.mark.parametrize("options, named", [
    (["--max-request-mib", "-1"], "--max-request-mib -1"),
    (["--max-request-mib", "0"], "--max-request-mib 0"),
    (["--max-request-mib", "64", "--max-buffered-mib", "32"], "--max-buffered-mib 32"),
    (["--header-timeout", "0"], "--header-timeout 0"),
    (["--port", "70000"], "--port 70000"),
])
def test_the_gates_options_are_checked_before_anything_starts(tmp_path, capsys, options, named):
    from omnirad_fl.server.cli import main
    state = tmp_path / "state"
    assert main(["--insecure", "--state-dir", str(state), "data.num-classes=3", "data.num-sites=2", *options]) == 2
    assert named in capsys.readouterr().err
    assert not state.exists()


def test_a_connection_that_sends_part_of_its_headers_is_closed(tmp_path):
    recorder, upstream_port, public_port = Recorder(), free_loopback_port(), free_loopback_port()
    stand_in = ThreadedServer(Starlette(routes=[Route("/{path:path}", recorder.answer)]), "127.0.0.1", upstream_port)
    stand_in.start()
    front = fleet_gate(GateSettings("127.0.0.1", public_port, f"http://127.0.0.1:{upstream_port}", header_timeout=0.5))
    front.start()
    try:
        for partial in (b"", b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: x\r\n"):
            with socket.create_connection(("127.0.0.1", public_port), timeout=10) as connection:
                connection.sendall(partial)
                started = time.monotonic()
                assert connection.recv(100) == b""  # closed by the gate, not by our 10 s timeout
                assert time.monotonic() - started < 5
        # a complete request is answered, and the connection may idle as long as uvicorn's keep-alive
        status = raw_request(public_port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 200")
    finally:
        front.stop()
        stand_in.stop()


def test_bodies_buffered_at_once_are_capped_and_refused_with_503(tmp_path):
    """Two bodies the gate holds at once may not exceed max_buffered_bytes: the third is refused
    before it is read, and the budget is whole again once they have been sent on."""
    release = threading.Event()

    class Slow(Recorder):
        async def answer(self, request: Request) -> JSONResponse:
            await request.body()
            await asyncio.to_thread(release.wait, 30)
            return JSONResponse({})

    recorder, upstream_port, public_port = Slow(), free_loopback_port(), free_loopback_port()
    stand_in = ThreadedServer(Starlette(routes=[Route("/{path:path}", recorder.answer, methods=["POST"])]),
                              "127.0.0.1", upstream_port)
    stand_in.start()
    front = fleet_gate(GateSettings("127.0.0.1", public_port, f"http://127.0.0.1:{upstream_port}",
                                    max_request_bytes=LIMIT, max_buffered_bytes=2 * LIMIT))
    front.start()
    url = f"http://127.0.0.1:{public_port}/v1/fleet/push-object"
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            held = [pool.submit(httpx.post, url, content=b"\x00" * LIMIT, timeout=30) for _ in range(2)]
            time.sleep(1.0)  # both bodies are in the gate, waiting on the stand-in
            refused = httpx.post(url, content=b"\x00" * 10, timeout=30)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            release.set()
            assert [f.result().status_code for f in held] == [200, 200]
        assert httpx.post(url, content=b"\x00" * LIMIT, timeout=30).status_code == 200
    finally:
        release.set()
        front.stop()
        stand_in.stop()


def test_settings_a_gate_cannot_work_with_are_refused():
    for bad in ({"max_request_bytes": -1}, {"max_request_bytes": 10, "max_buffered_bytes": 5},
                {"header_timeout": float("nan")}):
        with pytest.raises(ValueError, match="fleet gate"):
            GateSettings("127.0.0.1", 9092, "http://127.0.0.1:1", **bad)


def test_a_body_that_stops_coming_is_answered_408():
    recorder, upstream_port, public_port = Recorder(), free_loopback_port(), free_loopback_port()
    stand_in = ThreadedServer(Starlette(routes=[Route("/{path:path}", recorder.answer, methods=["POST"])]),
                              "127.0.0.1", upstream_port)
    stand_in.start()
    front = fleet_gate(GateSettings("127.0.0.1", public_port, f"http://127.0.0.1:{upstream_port}", body_timeout=0.5))
    front.start()
    try:
        status = raw_request(public_port, b"POST /v1/fleet/push-object HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                                          b"\r\n" + b"\0" * 10)  # 10 of the 100 bytes, then nothing
        assert status.startswith(b"HTTP/1.1 408"), status
        assert recorder.seen == []
    finally:
        front.stop()
        stand_in.stop()


def test_an_answer_the_gate_holds_counts_against_the_buffer_cap():
    """The SuperLink's answers are held by the gate too: a 32 MiB answer to a site that reads slowly
    is relayed piece by piece, the piece waiting on the site counting against max_buffered_bytes,
    so a request that no longer fits is refused with 503 until the site has read the answer, which
    arrives whole. (Answers used to be read whole into memory and counted nowhere.)"""
    piece = bytes(range(256)) * 4096  # 1 MiB

    async def large(request: Request) -> StreamingResponse:
        async def pieces():
            for _ in range(32):
                yield piece
        return StreamingResponse(pieces())

    recorder, upstream_port, public_port = Recorder(), free_loopback_port(), free_loopback_port()
    stand_in = ThreadedServer(Starlette(routes=[Route("/v1/fleet/pull-object", large, methods=["GET"]),
                                                Route("/{path:path}", recorder.answer, methods=["POST"])]),
                              "127.0.0.1", upstream_port)
    stand_in.start()
    front = fleet_gate(GateSettings("127.0.0.1", public_port, f"http://127.0.0.1:{upstream_port}",
                                    max_request_bytes=LIMIT, max_buffered_bytes=LIMIT))
    front.start()
    url = f"http://127.0.0.1:{public_port}/v1/fleet/push-object"
    slow = http.client.HTTPConnection("127.0.0.1", public_port, timeout=30)
    try:
        slow.request("GET", "/v1/fleet/pull-object")
        answer = slow.getresponse()  # the headers only: the body waits in the socket buffers, then the gate
        deadline, status = time.monotonic() + 20, None
        while time.monotonic() < deadline and status != 503:
            status = httpx.post(url, content=b"\x00" * 10, timeout=30).status_code
            time.sleep(0.1)
        assert status == 503
        assert answer.status == 200 and answer.read() == piece * 32
        assert httpx.post(url, content=b"\x00" * LIMIT, timeout=30).status_code == 200
    finally:
        slow.close()
        front.stop()
        stand_in.stop()
