"""End to end: `flwr run .` on loopback SuperLinks the session shares (one per federation size,
``superlinks`` in conftest.py) or, where a test stops its federation, one it owns; then the run
folder's contents. What goes through ``flwr run`` here is Flower's side: its simulation runtime, a
plain Flower set-up's federation size, and a federation stopped (or its SuperLink killed) and
resumed. The features' whole runs are in test_runs_in_process.py (the same phases and ClientApp in
this process)."""

import json
import subprocess
import time

import pytest

from omnirad.site_state import SiteStateStore
from omnirad_fl.server.processes import free_loopback_port
from omnirad_fl.simulations.flower_local import LocalSuperLink, flwr_run_command, write_flower_config
from tests.conftest import PROJECT, still_running

pytestmark = pytest.mark.slow


def test_two_rounds_on_three_sites_leave_a_complete_run_folder(three_site_flwr_run):
    folder = three_site_flwr_run
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [1, 2]
    for line in lines:
        assert set(line["sites"]) == {"0", "1", "2"}
        assert {"accuracy", "macro-f1", "auc"} <= set(line["global"])
        assert all({"train", "evaluate", "bytes-up"} <= set(s) for s in line["sites"].values())
        assert line["bytes-down"] > 0 and line["seconds"] > 0

    summary = json.loads((folder / "summary.json").read_text())
    for key in ("final", "best", "wall-seconds", "bytes-up", "bytes-down", "peak-rss-mb", "sites-per-round"):
        assert key in summary
    assert summary["weights"] == "random init" and summary["rounds"] == 2
    # What a site sends is the linear head (192 x 4 + 4 floats), not the 5.4M-parameter encoder.
    assert summary["adapter-parameter-bytes"] == (192 * 4 + 4) * 4
    assert summary["adapter-parameter-bytes"] <= summary["bytes-up-per-site-round"] < 1.5 * summary["adapter-parameter-bytes"]
    assert "data.num-sites: 3" in (folder / "config.yaml").read_text()
    assert json.loads((folder / "encoder.json").read_text()) == {"encoder": "vit-tiny", "weights": "", "sha256": "random-init"}
    partition = json.loads((folder / "partition.json").read_text())
    assert sum(s["num-samples"] for s in partition["sites"]) == 600
    for name in ("final_adapter.safetensors", "curves.png", "partition.png"):
        assert (folder / name).exists()


def test_without_data_num_sites_a_run_takes_the_size_of_flowers_federation(three_site_flwr_run):
    """As in a plain Flower set-up, whose federation size is not the project's: no data.num-sites."""
    folder = three_site_flwr_run
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["num-sites"] == 3 and summary["sites-per-round"] == {"1": ["0", "1", "2"], "2": ["0", "1", "2"]}
    assert "data.num-sites: 3" in (folder / "config.yaml").read_text()
    assert len(json.loads((folder / "partition.json").read_text())["sites"]) == 3


def test_a_dp_fedper_run_whose_superlink_is_killed_resumes_with_the_metrics_and_epsilon_of_an_uninterrupted_one(
        tmp_path, superlinks, run_in_process):
    """A SuperLink (this test's own) stopped with its ServerApp and simulation after round 2's
    checkpoint, in the middle of the next round; ``flwr run`` with run.resume-from on the session's
    SuperLink ends as the same run uninterrupted. The simulation's site processes end with the
    SuperLink, so each site reloads its privacy account and its own output layer (FedPer) from its
    state store: nothing of the rounds before is lost, and nothing spent in the killed round is
    counted twice. The uninterrupted run is the same phases and ClientApp in this process
    (``run_in_process``): runs are seeded per site and round and aggregated in site order, so both
    runtimes give the same numbers. (A resumed run's server optimiser state: test_runs_in_process.py.)"""
    config = ("num-server-rounds=4 data.num-train=160 data.num-test=40 data.size=32 train.local-epochs=1 "
              "strategy.name='fedper' model.adapter='mlp' privacy.dp=true privacy.noise-multiplier=1.5 "
              "privacy.epsilon=50.0")
    expected = json.loads((run_in_process(2, config, tmp_path / "whole") / "summary.json").read_text())

    flwr_home, runs = tmp_path / "flwr", tmp_path / "runs"
    write_flower_config(flwr_home, num_supernodes=2)
    link = LocalSuperLink(flwr_home, PROJECT, http_port=free_loopback_port())
    with link:
        command = flwr_run_command(PROJECT, f"{config} data.num-sites=2 run.output-dir='{runs}'", 2)
        client = subprocess.Popen(command, cwd=PROJECT, env=link.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while not any(json.loads(m.read_text())["round"] >= 2 for m in runs.glob("*/checkpoint.json")):
            assert time.monotonic() < deadline and client.poll() is None, "round 2 was never checkpointed"
            time.sleep(0.2)
    # leaving the block stopped the SuperLink and, by PID, the server app and simulation with it
    assert len(link.started_pids) >= 2 and not still_running(link.started_pids)
    client.wait(timeout=60)
    (folder,) = list(runs.iterdir())
    stopped_after = json.loads((folder / "checkpoint.json").read_text())["round"]
    assert stopped_after < 4 and not (folder / "summary.json").exists()

    superlinks.flwr_run(2, f"{config} data.num-sites=2 run.output-dir='{runs}' run.resume-from='{folder}'")
    assert list(runs.iterdir()) == [folder]
    resumed = json.loads((folder / "summary.json").read_text())
    assert resumed["resumed-after-round"] == stopped_after and resumed["rounds"] == 4
    assert [json.loads(x)["round"] for x in (folder / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert resumed["sites-per-round"] == expected["sites-per-round"] == {str(r): ["0", "1"] for r in (1, 2, 3, 4)}
    assert resumed["epsilon-per-site"] == pytest.approx(expected["epsilon-per-site"], rel=1e-9)
    for key, value in expected["final-federated-val"].items():
        assert resumed["final-federated-val"][key] == pytest.approx(value, abs=1e-6), key
    run_key = json.loads((folder / "run.json").read_text())["run-key"]
    for site in (0, 1):  # one file per site for the run, holding all four rounds' account
        store = folder / "site-state" / f"site-{site}"
        assert [p.name for p in store.iterdir()] == [f"{run_key}.safetensors"]
        kept = SiteStateStore(store).load(run_key)
        assert kept.trained_rounds == [1, 2, 3, 4]
        assert kept.ledger.epsilon(1e-5) == pytest.approx(expected["epsilon-per-site"][str(site)], rel=1e-9)
