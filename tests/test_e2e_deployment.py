"""Deployment end to end on 127.0.0.1: omnirad-server (SuperLink with TLS, site authentication and a
state database) and one omnirad-client SuperNode per site, as the README's deployment section runs
them. Every process is stopped by PID, with all it started, whether the test passes or fails."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from flwr.common.config import parse_config_args

from omnirad_fl.client.cli import supernode_command
from omnirad_fl.client.keys import write_site_keys
from omnirad_fl.client.site_config import load_site_config
from omnirad_fl.server.app_bundle import write_publisher_key
from omnirad_fl.server.cli import run_configuration
from omnirad_fl.server.processes import free_loopback_port
from omnirad_fl.simulations.load_test import LoadPlan, LoadReport, load_federation, read_run_folder, run_federation
from omnirad_fl.simulations.local_federation import BIN, LocalFederation, wait_for

pytestmark = pytest.mark.slow


def speaks_only_tls(fed: LocalFederation) -> bool:
    """The public port answers HTTPS with a certificate our CA signed, and refuses plain HTTP."""
    context = ssl.create_default_context(cafile=str(fed.folder / "certs" / "ca.crt"))
    with urllib.request.urlopen(f"https://127.0.0.1:{fed.port}/health", timeout=10, context=context) as r:
        secure = r.status == 200
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{fed.port}/health", timeout=10)
    except (urllib.error.URLError, ConnectionError, http.client.HTTPException):
        return secure
    return False


def control_api_is_closed(fed: LocalFederation) -> bool:
    """The public port refuses Flower's Control API (which would take runs from anyone)."""
    context = ssl.create_default_context(cafile=str(fed.folder / "certs" / "ca.crt"))
    request = urllib.request.Request(f"https://127.0.0.1:{fed.port}/v1/control/list-runs", data=b"", method="POST")
    try:
        urllib.request.urlopen(request, timeout=10, context=context)
    except urllib.error.HTTPError as refused:
        return refused.code == 403
    return False


@pytest.fixture
def federation_in(tmp_path):
    made: list[LocalFederation] = []

    def make(sites: list[str], rounds: int, tasks: tuple[str, ...] = (), **overrides: object) -> LocalFederation:
        made.append(LocalFederation(tmp_path, sites, rounds, tasks, **overrides))
        return made[-1]

    yield make
    for federation in made:
        federation.stop_all()
        assert not federation.leftovers()


def test_three_sites_over_tls_survive_losing_one_and_a_site_runtime_killed_mid_round(federation_in):
    """One federation, two failures (this test holds what two tests asserted before, each with its
    own federation). Over TLS, with a closed-form ridge head first (round 0: the sites' sums, under
    DP with distributed noise, reaching the server only as their secure sum):
    site C disappears without a word while round 2 is under way and the run goes on without it;
    site A's runtime is killed (SIGKILL, the out-of-memory killer's way) while it answers a message,
    and A answers the next round: under DP-SGD its privacy account lives on disk, so the restarted
    runtime goes on from it."""
    fed = federation_in(["A", "B", "C"], rounds=3, **{"strategy.min_sites": 1, "strategy.round_timeout": 150.0,
                                                      "model.adapter": "'linear'", "model.head_init": "'ridge'",
                                                      "privacy.dp": "true", "privacy.noise_multiplier": 2.0,
                                                      "privacy.epsilon": 1000.0, "privacy.secure_sum": "true",
                                                      "privacy.distributed_noise": "true"})
    fed.start_server()
    for name in "ABC":
        fed.start_site(name)
    wait_for(lambda: fed.rounds_done() >= 1, 600, "round 1")
    assert speaks_only_tls(fed) and control_api_is_closed(fed)
    fed.kill("site-C")  # round 2 is under way: the site disappears without a word
    wait_for(lambda: fed.running_clientapp("A"), 300, "site A's next message", poll=0.1)
    killed_in = fed.rounds_done() + 1
    fed.kill_runtime("A")
    server = fed.processes["server"]
    assert server.wait(timeout=900) == 0, fed.log("server")
    assert "the site runtime exited with status -9; starting it again" in fed.log("site-A")
    summary = json.loads((fed.run_folder() / "summary.json").read_text())
    assert summary["rounds"] == 3 and killed_in < 3
    sites = summary["sites-per-round"]
    assert sites["1"] == ["0", "1", "2"] and "1" in sites["2"] and "2" not in sites["2"]
    assert sites["3"] == ["0", "1"]  # A answers the round after its runtime was killed; C is gone
    assert any(failure.startswith("train: site 2") for failure in summary["failures"]), summary["failures"]
    assert "sites connected: 3 of 3" in fed.log("server")
    closed_form = json.loads((fed.run_folder() / "closed-form.json").read_text())
    assert closed_form["statistics-bytes-per-site"].keys() == {"site 0", "site 1", "site 2"}
    assert closed_form["secure-sum"] == {"sites": 3, "restarts": 0, "dropped-nodes": []}
    report = LoadReport(plan={"rounds": 3})
    read_run_folder(fed, report)
    assert report.rounds_completed == 3
    assert report.epsilon_monotone and len(report.epsilon_by_site["0"]) >= 2, report.epsilon_by_site


def uninterrupted_in_process(fed: LocalFederation, folder: Path, run_in_process, monkeypatch) -> Path:
    """``fed``'s run as omnirad-server configures it (its federation file and overrides), its sites
    answering in this process with the node configs omnirad-client gives their SuperNodes (their
    data files, encoder weights; a state folder of their own under ``folder``); its run folder."""
    monkeypatch.chdir(fed.folder)  # the server resolves the federation file's paths from its folder
    flat = run_configuration(Path("federation.yaml"), fed.overrides, folder / "runs", resume=False)
    nodes = []
    for name in fed.sites:
        site = load_site_config(fed.folder / "sites" / f"{name}.yaml")
        site.site_state_dir = str(folder / f"site-state-{name}")
        command = supernode_command(site)
        nodes.append(parse_config_args([command[command.index("--node-config") + 1]]))
    return run_in_process(len(nodes), flat, folder, nodes)


def start_intruder(fed: LocalFederation, folder: Path) -> subprocess.Popen[bytes]:
    """A site "C" with its own key, which the server never registered, posing as site A's peer (A's
    data and encoder; a runtime port and folders of its own, so it runs beside the real sites)."""
    write_site_keys(folder / "intruder" / "C.key", "C")
    intruder = yaml.safe_load((fed.folder / "sites" / "A.yaml").read_text())
    intruder["site"] = {"name": "C", "id": 3}
    intruder["auth-key"] = str(folder / "intruder" / "C.key")
    intruder["runtime-port"] = free_loopback_port()
    intruder["state-dir"], intruder["cache-dir"] = str(folder / "intruder" / "state"), str(folder / "intruder" / "cache")
    (fed.folder / "sites" / "C.yaml").write_text(yaml.safe_dump(intruder))
    return fed.start_site("C")


def test_deployed_sites_with_different_tasks_train_each_their_own_and_an_unregistered_site_cannot_join(
        federation_in, tmp_path):
    """Three tasks, one a captioning site with no vocabulary file: the run counts its vocabulary at
    that site alone before round 1."""
    fed = federation_in(["A", "B", "D"], rounds=1, tasks=("region", "lesions", "captions"))
    fed.start_server()
    intruder = start_intruder(fed, tmp_path)
    for name in "ABD":
        fed.start_site(name)
    assert intruder.wait(timeout=180) != 0
    assert "Failed to activate SuperNode" in fed.log("site-C")
    assert fed.processes["server"].wait(timeout=600) == 0, fed.log("server")
    assert "sites connected: 3 of 3" in fed.log("server") and "sites connected: 4" not in fed.log("server")
    assert "region: multi-class [0, 1, 2, 3], sites 0" in fed.log("server")
    assert "lesions: segmentation [background, class 1, class 2], sites 1" in fed.log("server")
    assert "Caption vocabulary: " in fed.log("server") and "from the word counts of 1 sites" in fed.log("server")
    summary = json.loads((fed.run_folder() / "summary.json").read_text())
    assert summary["tasks"] == {"captions": [2], "lesions": [1], "region": [0]} and not summary["failures"]
    assert summary["sites-per-round"] == {"1": ["0", "1", "2"]}
    assert {"region/macro-f1", "lesions/dice", "captions/cider"} <= set(summary["final-federated-val"])
    counted = summary["vocabulary"]["captions"]
    assert counted["words"] > 10 and set(counted["bytes-per-site"]) == {"site 2"}
    tasks = json.loads((fed.run_folder() / "tasks.json").read_text())["groups"]
    assert len(tasks["captions"]["labels"]) == counted["words"] + 4  # the special tokens first


def test_an_insecure_server_runs_a_site_and_a_site_refuses_an_app_signed_by_a_publisher_it_does_not_trust(
        federation_in, tmp_path):
    """``omnirad-server --insecure`` (no TLS: plain HTTP, no site authentication) becomes healthy and
    its sites connect over plain HTTP; site A trusts another publisher than this coordinator, so it
    refuses the app and installs nothing, while site B, which trusts the coordinator, trains. (Two
    tests before, each with its own federation: the insecure server's in test_server_cli.py.)"""
    fed = federation_in(["A", "B"], rounds=1, num_train=60, **{"strategy.join_timeout": 120.0,
                                                               "model.head_init": "'random'"})
    (tmp_path / "other").mkdir()
    _, stranger = write_publisher_key(tmp_path / "other", "a-stranger")
    for name in ("A", "B"):  # the sites dial plain HTTP
        path = fed.folder / "sites" / f"{name}.yaml"
        site = yaml.safe_load(path.read_text())
        site["server"] = {"address": f"127.0.0.1:{fed.port}", "insecure": True}
        if name == "A":
            site["trusted-publishers"] = [stranger.read_text().strip()]  # A trusts someone else, not this coordinator
        path.write_text(yaml.safe_dump(site))
    server = fed.start("server", [str(BIN / "omnirad-server"), "--insecure", "--config", "federation.yaml", "--certs",
                                  "certs", "--host", "127.0.0.1", "--port", str(fed.port), "--state-dir", "server",
                                  *fed.overrides])
    wait_for(lambda: "registered sites: A, B" in fed.log("server") or server.poll() is not None,
             180, "the server to register the sites")
    assert server.poll() is None, fed.log("server")
    with urllib.request.urlopen(f"http://127.0.0.1:{fed.port}/health", timeout=10) as health:
        assert health.status == 200
    for name in ("A", "B"):
        fed.start_site(name)
    assert server.wait(timeout=600) == 0, fed.log("server")
    assert "sites connected: 2 of 2" in fed.log("server")
    summary = json.loads((fed.run_folder() / "summary.json").read_text())
    assert summary["sites-per-round"] == {"1": ["1"]}  # site A never trained, site B did
    assert any("whose key this site does not trust" in failure for failure in summary["failures"]), summary["failures"]
    assert "whose key this site does not trust" in fed.log("site-A")
    assert not list((fed.folder / "state" / "site-A").glob("apps/*/pyproject.toml"))  # nothing was installed
    assert list((fed.folder / "state" / "site-B").glob("apps/*/pyproject.toml"))  # where an accepted app goes


def test_a_dp_federation_whose_server_is_killed_mid_run_resumes_and_ends_like_an_uninterrupted_run(
        tmp_path, run_in_process, monkeypatch):
    """The load test's short version: the server machine dies after round 1's checkpoint (SuperLink,
    ServerApp and all) and ``omnirad-server --resume`` ends the run, under DP-SGD, with the metrics
    and every site's epsilon of the same run uninterrupted: each site's privacy account goes on from
    its state store, and nothing spent in the killed round is counted twice. The uninterrupted run
    is the same run (the server's run configuration, the sites' files and node configs) with its
    phases and ClientApp in this process: runs are seeded per site and round and aggregated in site
    order, so both runtimes give the same numbers. (Sites killed mid-round: the TLS test above.)"""
    plan = LoadPlan(sites=2, rounds=2, kill_every=0, server_restarts=(1,), num_train=300)
    fed = load_federation(tmp_path / "deployed", plan)
    straight = uninterrupted_in_process(fed, tmp_path / "uninterrupted", run_in_process, monkeypatch)
    report = run_federation(fed, plan)
    assert [fault.split(" ")[0] for fault in report.faults] == ["server"], report.faults
    assert report.rounds_completed == report.rounds_accounted == report.checkpoint_round == 2
    assert report.last_resumed_after == 1 and report.epsilon_monotone
    assert report.ok and report.peak_rss_mb["server"] > 0 and report.round_seconds["p50"] > 0
    resumed, expected = (json.loads((folder / "summary.json").read_text()) for folder in (fed.run_folder(), straight))
    assert resumed["epsilon-per-site"] == pytest.approx(expected["epsilon-per-site"], rel=1e-9)
    for name, value in expected["final"].items():
        assert resumed["final"][name] == pytest.approx(value, abs=1e-4), name
