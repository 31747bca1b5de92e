"""Deployment end to end on 127.0.0.1: omnirad-server (SuperLink with TLS, site authentication and a
state database) and one omnirad-client SuperNode per site, as the README's deployment section runs
them. Every process is stopped by PID, with all it started, whether the test passes or fails."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from omnirad_fl.client.keys import write_site_keys
from omnirad_fl.server.app_bundle import write_publisher_key
from omnirad_fl.server.certs import write_federation
from omnirad_fl.server.processes import stop_process_tree
from omnirad_fl.simulations.deploy_demo import write_demo

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Federation:
    """A demo federation in ``folder``: certificates, site files, data, and the processes it runs."""

    def __init__(self, folder: Path, sites: list[str], rounds: int, tasks: tuple[str, ...] = (), **overrides: object) -> None:
        self.folder, self.port = folder, free_port()
        write_demo(folder, sites, f"127.0.0.1:{self.port}", size=32, rounds=rounds, num_train=300, tasks=tasks)
        # each site makes its key pair itself; the coordinator registers the public keys alone
        public = {name: write_site_keys(folder / "sites" / f"{name}.key", name) for name in sites}
        write_federation(folder / "certs", ["localhost", "127.0.0.1"], public)
        write_publisher_key(folder / "certs", "test-coordinator")  # omnirad-server signs the app with it
        for name in sites:  # a free local port for each SuperNode's ClientApp API; the app publisher it trusts
            path = folder / "sites" / f"{name}.yaml"
            site = yaml.safe_load(path.read_text())
            site["runtime-port"] = free_port()
            site["trusted-publishers"] = ["../certs/publisher.pub"]
            path.write_text(yaml.safe_dump(site))
        self.overrides = [f"{key.replace('_', '-')}={value}" for key, value in overrides.items()]
        self.env = {**os.environ, "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
                    "HF_HUB_OFFLINE": "1", "FLWR_DISABLE_UPDATE_CHECK": "1"}
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}  # the latest log of each process name
        self.stopped: list[int] = []

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        self.logs[name] = self.folder / f"{name}-{len(list(self.folder.glob(f'{name}-*.log')))}.log"
        with self.logs[name].open("wb") as log:
            self.processes[name] = subprocess.Popen(command, cwd=self.folder, env=self.env, stdout=log,
                                                    stderr=subprocess.STDOUT)
        return self.processes[name]

    def log(self, name: str) -> str:
        path = self.logs.get(name)
        return path.read_text(errors="replace") if path and path.exists() else ""

    def start_server(self, state: str = "server", resume: bool = False) -> None:
        command = [str(BIN / "omnirad-server"), "--config", "federation.yaml", "--certs", "certs", "--host",
                   "127.0.0.1", "--port", str(self.port), "--state-dir", state, *self.overrides]
        self.start("server", command + (["--resume"] if resume else []))
        wait_for(lambda: "registered sites:" in self.log("server") or self.processes["server"].poll() is not None,
                 120, "the server to register the sites")
        assert self.processes["server"].poll() is None, self.log("server")

    def start_site(self, name: str) -> subprocess.Popen:
        return self.start(f"site-{name}", [str(BIN / "omnirad-client"), "--site", name])

    def run_folder(self, state: str = "server") -> Path | None:
        folders = list((self.folder / state / "runs").glob("*/config.yaml"))
        return folders[0].parent if folders else None

    def rounds_done(self, state: str = "server") -> int:
        folder = self.run_folder(state)
        mark = folder / "checkpoint.json" if folder else None
        return json.loads(mark.read_text())["round"] if mark and mark.exists() else 0

    def speaks_only_tls(self) -> bool:
        """The SuperLink answers HTTPS with a certificate our CA signed, and refuses plain HTTP."""
        context = ssl.create_default_context(cafile=str(self.folder / "certs" / "ca.crt"))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/health", timeout=10, context=context) as r:
            secure = r.status == 200
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=10)
        except (urllib.error.URLError, ConnectionError, http.client.HTTPException):
            return secure
        return False

    def kill(self, name: str) -> None:
        """Kill a process and all it started at once (SIGKILL: no clean shutdown, as in a crash)."""
        root = psutil.Process(self.processes.pop(name).pid)
        tree = [root, *root.children(recursive=True)]
        for proc in tree:
            proc.kill()
        psutil.wait_procs(tree, timeout=10)
        self.stopped += [p.pid for p in tree]

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stopped += stop_process_tree(self.processes.pop(name).pid)

    def leftovers(self) -> list[int]:
        return [pid for pid in self.stopped if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]


@pytest.fixture
def federation_in(tmp_path):
    made: list[Federation] = []

    def make(sites: list[str], rounds: int, tasks: tuple[str, ...] = (), **overrides: object) -> Federation:
        made.append(Federation(tmp_path, sites, rounds, tasks, **overrides))
        return made[-1]

    yield make
    for federation in made:
        federation.stop_all()
        assert not federation.leftovers()


def test_three_sites_over_tls_survive_losing_one_in_round_two(federation_in):
    # a closed-form ridge head first (round 0: every site's sums, over TLS), then FedAvg rounds
    fed = federation_in(["A", "B", "C"], rounds=2, **{"strategy.min_sites": 2, "strategy.round_timeout": 150.0,
                                                      "model.adapter": "'linear'", "model.head_init": "'ridge'"})
    fed.start_server()
    for name in "ABC":
        fed.start_site(name)
    wait_for(lambda: fed.rounds_done() >= 1, 600, "round 1")
    assert fed.speaks_only_tls()
    fed.kill("site-C")  # round 2 is under way: the site disappears without a word
    server = fed.processes["server"]
    assert server.wait(timeout=600) == 0, fed.log("server")
    summary = json.loads((fed.run_folder() / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert summary["sites-per-round"] == {"1": ["0", "1", "2"], "2": ["0", "1"]}
    assert any(failure.startswith("train: site 2") for failure in summary["failures"]), summary["failures"]
    assert "sites connected: 3 of 3" in fed.log("server")
    assert json.loads((fed.run_folder() / "closed-form.json").read_text())["statistics-bytes-per-site"].keys() == {
        "site 0", "site 1", "site 2"}


def test_an_unregistered_site_cannot_join(federation_in, tmp_path):
    fed = federation_in(["A"], rounds=1)
    fed.start_server()
    write_site_keys(tmp_path / "intruder" / "B.key", "B")  # a key the server never registered
    intruder = yaml.safe_load((tmp_path / "sites" / "A.yaml").read_text())
    intruder["site"] = {"name": "B", "id": 1}
    intruder["auth-key"] = str(tmp_path / "intruder" / "B.key")
    (tmp_path / "sites" / "B.yaml").write_text(yaml.safe_dump(intruder))
    site = fed.start_site("B")
    assert site.wait(timeout=120) != 0
    assert "Failed to activate SuperNode" in fed.log("site-B")
    wait_for(lambda: "sites connected: 0 of 1" in fed.log("server"), 180, "the ServerApp to count the sites")
    time.sleep(5)
    assert "sites connected: 1" not in fed.log("server")


def final_metrics(folder: Path) -> dict[str, float]:
    return json.loads((folder / "summary.json").read_text())["final"]


def test_a_server_killed_mid_run_resumes_and_ends_like_an_uninterrupted_run(federation_in):
    fed = federation_in(["A", "B"], rounds=2)
    fed.start_server(state="uninterrupted")
    for name in "AB":
        fed.start_site(name)
    assert fed.processes["server"].wait(timeout=900) == 0, fed.log("server")
    fed.stop_all()

    fed.start_server(state="interrupted")
    for name in "AB":
        fed.start_site(name)
    wait_for(lambda: fed.rounds_done("interrupted") >= 1, 600, "round 1's checkpoint")
    fed.kill("server")  # the server machine dies: SuperLink, ServerApp and all, mid-round
    assert fed.rounds_done("interrupted") < 2
    fed.start_server(state="interrupted", resume=True)  # the sites are still up and reconnect
    assert fed.processes["server"].wait(timeout=900) == 0, fed.log("server")

    resumed, straight = fed.run_folder("interrupted"), fed.run_folder("uninterrupted")
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["resumed-after-round"] == 1 and summary["rounds"] == 2
    expected = final_metrics(straight)
    for name, value in final_metrics(resumed).items():
        assert value == pytest.approx(expected[name], abs=1e-4), name


def test_deployed_sites_with_different_tasks_train_each_their_own(federation_in):
    fed = federation_in(["A", "B"], rounds=1, tasks=("region", "lesions"))
    fed.start_server()
    for name in "AB":
        fed.start_site(name)
    assert fed.processes["server"].wait(timeout=600) == 0, fed.log("server")
    assert "region: multi-class [0, 1, 2, 3], sites 0" in fed.log("server")
    assert "lesions: segmentation [background, class 1, class 2], sites 1" in fed.log("server")
    summary = json.loads((fed.run_folder() / "summary.json").read_text())
    assert summary["tasks"] == {"lesions": [1], "region": [0]} and not summary["failures"]
    assert {"region/macro-f1", "lesions/dice"} <= set(summary["final-federated-val"])


def test_a_site_refuses_an_app_signed_by_a_publisher_it_does_not_trust(federation_in, tmp_path):
    # a random head: with none of its sites answering, a closed-form head would stop the run before round 1
    fed = federation_in(["A"], rounds=1, **{"strategy.join_timeout": 120.0, "model.head_init": "'random'"})
    (tmp_path / "other").mkdir()
    _, stranger = write_publisher_key(tmp_path / "other", "a-stranger")
    site_file = fed.folder / "sites" / "A.yaml"
    site = yaml.safe_load(site_file.read_text())
    site["trusted-publishers"] = [stranger.read_text().strip()]  # A trusts someone else, not this coordinator
    site_file.write_text(yaml.safe_dump(site))
    fed.start_server()
    fed.start_site("A")
    assert fed.processes["server"].wait(timeout=600) == 0, fed.log("server")
    summary = json.loads((fed.run_folder() / "summary.json").read_text())
    assert summary["sites-per-round"] == {"1": []}  # site A never trained
    assert any("whose key this site does not trust" in failure for failure in summary["failures"]), summary["failures"]
    assert "whose key this site does not trust" in fed.log("site-A")
    assert not list((fed.folder / "state" / "site-A").glob("apps/*/pyproject.toml"))  # nothing was installed
