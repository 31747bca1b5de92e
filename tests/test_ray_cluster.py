"""A simulation attached to a Ray cluster (``omnirad-sim --ray-address``): a head and a second node
on 127.0.0.1, each with room for one site at a time, run the sites of one federation between them,
and the run ends with the numbers of the same federation on the ordinary one-machine simulation.

The two nodes are Ray's own mini-cluster for tests (``ray.cluster_utils.Cluster``) in a process
of the test's: on one machine ``ray start --address 127.0.0.1:PORT`` either refuses a second node
(Ray kept on loopback) or rewrites 127.0.0.1 to the host's network address (where a loopback head
does not listen), so the CLI cannot build a loopback-only cluster. ``Cluster`` starts the processes
``ray start`` does (GCS, raylets, their agents and workers), on 127.0.0.1."""

import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from omnirad.config import ConfigError
from omnirad_fl.server.processes import free_loopback_port, still_running
from omnirad_fl.simulations import sim
from omnirad_fl.simulations.flower_local import ray_cluster_address
from tests.conftest import PROJECT, THREE_SITE_RUN

# Two nodes of 2 CPUs, and each site asks for Flower's default 2 CPUs: one site at a time per node,
# so the three sites cannot all run on one.
CLUSTER = """
import signal, sys
from ray.cluster_utils import Cluster

head_dir, worker_dir, gcs_port, dashboard_port = sys.argv[1:]
cluster = Cluster(shutdown_at_exit=False)
loopback = {"num_cpus": 2, "node_ip_address": "127.0.0.1", "dashboard_agent_listen_port": None}
cluster.add_node(temp_dir=head_dir, gcs_server_port=int(gcs_port), dashboard_port=int(dashboard_port),
                 include_dashboard=False, **loopback)
cluster.add_node(temp_dir=worker_dir, **loopback)
print("ray cluster at", cluster.address, flush=True)
signal.pause()
"""
# The session's 3-site `flwr run` (conftest.THREE_SITE_RUN), whose run is the one-machine reference.
FEDERATION = {**THREE_SITE_RUN, "data.num-sites": 3}
SITE_LINE = re.compile(r"site (\d+) computes on ")  # what a site logs when its process first builds it


@pytest.fixture
def two_node_cluster():
    """A Ray head and a worker node on 127.0.0.1, each with its own temp folder (so its workers'
    logs); yields the head's address and the two folders. Every process of it is stopped by its
    process group at the end, never with `ray stop` (other Rays on this machine are not ours)."""
    # A short folder: Ray's sockets live in it, and a socket's path has at most 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="omnirad-ray-"))
    (root / "ray").mkdir()
    folders = {"head": root / "head", "worker": root / "worker"}
    # RAY_TMPDIR: Ray notes the newest cluster's address in <its temp folder>/ray/ray_current_cluster,
    # and every ray.init() without an address on this machine would attach there (/tmp/ray by default).
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_TMPDIR": str(root)}
    command = [sys.executable, "-c", CLUSTER, str(folders["head"]), str(folders["worker"]),
               str(free_loopback_port()), str(free_loopback_port())]
    log = root / "cluster.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                   start_new_session=True)
    try:
        lines = (line.split() for line in process.stdout)  # until both nodes are up
        address = next((words[-1] for words in lines if words[:3] == ["ray", "cluster", "at"]), None)
        assert address, f"the Ray cluster did not start: {log.read_text()[-3000:]}"
        assert (root / "ray" / "ray_current_cluster").read_text() == address  # not in the machine's /tmp/ray
        yield address, folders
    finally:
        group = [p for p in psutil.process_iter() if _group(p.pid) == process.pid]
        os.killpg(process.pid, signal.SIGTERM)  # Ray's processes exit slowly on SIGTERM: KILL after 5 s
        _, alive = psutil.wait_procs(group, timeout=5)
        if alive:
            os.killpg(process.pid, signal.SIGKILL)
            psutil.wait_procs(alive, timeout=10)
        process.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)
        assert not still_running(p.pid for p in group)


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def sites_per_node(folders: dict[str, Path]) -> dict[str, set[int]]:
    """The sites each node's Ray workers built, from the lines they logged in that node's folder."""
    return {node: {int(m.group(1)) for log in folder.glob("session_*/logs/worker-*")
                   for m in SITE_LINE.finditer(log.read_text(errors="replace"))}
            for node, folder in folders.items()}


@pytest.mark.slow
def test_a_federation_on_a_two_node_ray_cluster_runs_sites_on_both_and_ends_as_on_one_machine(
        two_node_cluster, three_site_flwr_run, tmp_path):
    address, folders = two_node_cluster
    experiment = tmp_path / "tiny.yaml"
    experiment.write_text(yaml.safe_dump({**FEDERATION, "run.output-dir": str(tmp_path / "cluster-runs")}))
    started = time.monotonic()
    command = [str(Path(sys.executable).with_name("omnirad-sim")), str(experiment),
               "--port", str(free_loopback_port()), "--ray-address", address]
    completed = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    cluster_seconds = time.monotonic() - started

    placement = sites_per_node(folders)
    print(f"\nsites per Ray node: {placement}; the cluster run took {cluster_seconds:.0f} s")
    assert placement["head"] and placement["worker"], placement  # both nodes ran sites
    assert placement["head"] | placement["worker"] == {0, 1, 2}

    one_machine = three_site_flwr_run
    (cluster_run,) = [p for p in (tmp_path / "cluster-runs").iterdir() if (p / "summary.json").exists()]
    on_cluster, alone = (json.loads((f / "summary.json").read_text()) for f in (cluster_run, one_machine))
    print(f"final, cluster: {on_cluster['final']}\nfinal, one machine: {alone['final']}")
    assert on_cluster["sites-per-round"] == alone["sites-per-round"] == {"1": ["0", "1", "2"], "2": ["0", "1", "2"]}
    # Each site trains from its own seed (run.seed, round, site) with as many threads on either Ray
    # (Flower's 2 CPUs per site), and the server sums in site order, so the node a site ran on
    # changes no number: equal to float32 rounding (they come out identical).
    for cluster_round, alone_round in zip(*(rounds(f) for f in (cluster_run, one_machine)), strict=True):
        assert cluster_round == pytest.approx(alone_round, abs=1e-6), cluster_round["round"]
    assert on_cluster["final"] == pytest.approx(alone["final"], abs=1e-6)


def rounds(run_folder: Path) -> list[dict]:
    """Each round's metrics, flat: the global model's, the sites' (training, validation, bytes sent)
    and the means over sites, less the memory each process measured of itself."""
    def flat(value: object, key: str) -> dict:
        if isinstance(value, dict):
            return {k: v for name, item in value.items() for k, v in flat(item, f"{key}/{name}").items()}
        return {} if key.endswith("peak-rss-mb") else {key: value}

    lines = [json.loads(x) for x in (run_folder / "metrics.jsonl").read_text().splitlines()]
    return [flat({key: line[key] for key in ("round", "global", "federated-val", "train", "sites", "bytes-up")}, "")
            for line in lines]


def test_an_address_where_no_ray_head_answers_is_refused_before_anything_starts(tmp_path, capsys):
    closed = free_loopback_port()
    with pytest.raises(ConfigError, match=rf"Ray address '127.0.0.1:{closed}': no Ray head answers there"):
        ray_cluster_address(f"127.0.0.1:{closed}")
    with pytest.raises(ConfigError, match=r"Ray address 'ray://head:10001': expected HOST:PORT"):
        ray_cluster_address("ray://head:10001")
    with pytest.raises(ConfigError, match=r"Ray address 'head': expected HOST:PORT"):
        ray_cluster_address("head")

    config = PROJECT / "simulations" / "configs" / "quick.yaml"
    assert sim.main([str(config), f"run.output-dir={tmp_path}", "--ray-address", f"127.0.0.1:{closed}"]) == 2
    assert f"omnirad-sim: Ray address '127.0.0.1:{closed}': no Ray head answers there" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_ray_address_beside_a_running_superlink_is_refused(tmp_path, monkeypatch, capsys):
    """That SuperLink's simulations would use the Ray it was started with, not the cluster."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # this process attaches to no cluster of its own
    server = http.server.HTTPServer(("127.0.0.1", 0), HealthyHandler)  # answers as a SuperLink does
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:  # the same port stands in for a Ray head: anything listening passes the address check
        config = PROJECT / "simulations" / "configs" / "quick.yaml"
        assert sim.main([str(config), f"run.output-dir={tmp_path}", "--port", str(port),
                         "--ray-address", f"127.0.0.1:{port}"]) == 2
    finally:
        server.shutdown()
    assert f"a SuperLink already runs on 127.0.0.1:{port}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    assert "RAY_ADDRESS" not in os.environ  # nothing of the refused attach stays for this process's later runs


class HealthyHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass
