"""End to end: `flwr run .` on a loopback SuperLink this test owns, then the run folder's contents."""

import json
import socket
from pathlib import Path

import psutil
import pytest

from simulations.flower_local import LocalSuperLink, flwr_run, write_flower_config

PROJECT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_rounds_on_three_sites_leave_a_complete_run_folder(tmp_path):
    flwr_home, runs = tmp_path / "flwr", tmp_path / "runs"
    write_flower_config(flwr_home, num_supernodes=3)
    link = LocalSuperLink(flwr_home, PROJECT, http_port=free_port())
    run_config = (
        f"num-server-rounds=2 data.num-sites=3 data.num-train=600 data.num-test=200 "
        f"train.local-epochs=2 model.adapter='linear' run.output-dir='{runs}'"
    )
    with link:
        completed = flwr_run(PROJECT, link.env, run_config, timeout=900)
    assert len(link.started_pids) >= 2  # the SuperLink, its SuperExec and what they started
    assert not [pid for pid in link.started_pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert completed.returncode == 0

    (folder,) = list(runs.iterdir())
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
    assert (folder / "final_adapter.safetensors").exists() and (folder / "curves.png").exists()
