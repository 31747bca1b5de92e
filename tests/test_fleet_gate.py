"""The public port passes the sites' Fleet API through to the SuperLink unchanged and refuses the
Control and Runtime APIs and oversized requests before they reach it (on 127.0.0.1, plain HTTP:
the end-to-end deployment tests run the same gate with TLS in front of a real SuperLink)."""

import http.client

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from omnirad_fl.server.fleet_gate import GateSettings, ThreadedServer, fleet_gate
from omnirad_fl.server.processes import free_loopback_port

LIMIT = 1 << 16


class Recorder:
    """A stand-in SuperLink that answers every request with what it received."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def answer(self, request: Request) -> JSONResponse:
        body = await request.body()
        self.seen.append(request.url.path)
        return JSONResponse({"path": request.url.path, "query": request.url.query, "bytes": len(body),
                             "signature": request.headers.get("x-signature")},
                            status_code=401 if request.url.path.endswith("unauthorised") else 200,
                            headers={"x-upstream": "superlink"})


@pytest.fixture
def gate():
    recorder, upstream_port, public_port = Recorder(), free_loopback_port(), free_loopback_port()
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
