"""run.tracking: a whole run (in one process) written to TensorBoard or MLflow, read back with the
libraries' own readers: every round's scalars, the configuration, the artifacts; a resumed run goes
on in the same MLflow run; and the default install imports neither library."""

import json
import subprocess
import sys

import pytest

from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.tracking import TRACKING_FILE, check_tracking, round_scalars
from omnirad_fl.server import app as server_app  # noqa: F401 - registers every phase
from omnirad_fl.server.phases import ServerRun, run_phases
from omnirad_fl.server.run_config import load_run_config
from omnirad_fl.simulations.in_process import InProcessGrid
from omnirad_fl.simulations.report import write_run_report

pytestmark = pytest.mark.usefixtures("task_identity")

SMALL = {"data.num-train": 160, "data.num-test": 40, "data.size": 32, "data.num-sites": 2, "data.partition": "iid",
         "train.local-epochs": 1}


def run_in_process(flat: dict) -> ServerRun:
    return run_phases(ServerRun(InProcessGrid(flat, num_sites=2), load_run_config(flat)))


def metrics_lines(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_round_scalars_flatten_a_metrics_line():
    line = {"round": 3, "global": {"accuracy": 0.5, "auc": float("nan")}, "federated-val": {"accuracy": 0.25},
            "train": {"train-loss": 1.5}, "sites": {"1": {"evaluate": {"accuracy": 0.75}, "bytes-up": 100,
                                                         "device": "cpu fp32"}},
            "bytes-up": 100, "bytes-down": 200, "seconds": 1.25, "failures": ["x"], "rejected": []}
    assert round_scalars(line) == {"test/accuracy": 0.5, "federated-val/accuracy": 0.25, "train/train-loss": 1.5,
                                   "site-1/evaluate/accuracy": 0.75, "site-1/bytes-up": 100.0, "bytes-up": 100.0,
                                   "bytes-down": 200.0, "seconds": 1.25, "failures": 1.0, "rejected-updates": 0.0}


def test_an_unknown_tracker_is_refused_by_name():
    with pytest.raises(ConfigError, match="run.tracking"):
        check_tracking(load_config({"run.tracking": "wandb"}).run)


def test_mlflow_lists_every_round_and_the_configuration(tmp_path):
    from mlflow.tracking import MlflowClient

    flat = {**SMALL, "num-server-rounds": 2, "run.output-dir": str(tmp_path / "sweep-a"), "run.tracking": "mlflow"}
    folder = run_in_process(flat).need_folder().path
    lines = metrics_lines(folder)
    record = json.loads((folder / TRACKING_FILE).read_text())
    assert record["tracking-uri"] == f"sqlite:///{tmp_path / 'sweep-a' / 'mlflow.db'}"

    client = MlflowClient(tracking_uri=record["tracking-uri"])
    experiment = client.get_experiment_by_name("sweep-a")  # the output folder's name
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == folder.name and run.info.status == "FINISHED"
    assert run.data.params["num-server-rounds"] == "2" and run.data.params["run.tracking"] == "mlflow"
    history = client.get_metric_history(run.info.run_id, "test/accuracy")
    assert [(m.step, m.value) for m in history] == [(line["round"], line["global"]["accuracy"]) for line in lines]
    assert [line["round"] for line in lines] == [0, 1, 2]  # round 0: the closed-form head
    for site in ("0", "1"):
        steps = client.get_metric_history(run.info.run_id, f"site-{site}/evaluate/accuracy")
        assert [m.value for m in steps] == [line["sites"][site]["evaluate"]["accuracy"] for line in lines]
    bytes_up = client.get_metric_history(run.info.run_id, "bytes-up")
    assert [m.value for m in bytes_up] == [float(line["bytes-up"]) for line in lines]
    summary = json.loads((folder / "summary.json").read_text())
    assert run.data.metrics["shipped/round"] == summary["shipped"]["round"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "summary.json", "curves.png"} <= artifacts
    write_run_report(folder)  # written after the run: it joins the same MLflow run
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "sites.png"} <= artifacts and client.get_run(run.info.run_id).info.status == "FINISHED"

    # a second run in the same output folder (a sweep's next cell) is a second run of the same experiment
    run_in_process({**flat, "run.seed": 1})
    assert len(client.search_runs([experiment.experiment_id])) == 2


def test_a_resumed_run_goes_on_in_its_mlflow_run(tmp_path):
    from mlflow.tracking import MlflowClient

    flat = {**SMALL, "model.head-init": "random", "num-server-rounds": 1, "run.output-dir": str(tmp_path),
            "run.tracking": "mlflow"}
    folder = run_in_process(flat).need_folder().path
    run_in_process({**flat, "num-server-rounds": 2, "run.resume-from": str(folder)})
    record = json.loads((folder / TRACKING_FILE).read_text())
    client = MlflowClient(tracking_uri=record["tracking-uri"])
    [run] = client.search_runs([client.get_experiment_by_name(tmp_path.name).experiment_id])
    history = client.get_metric_history(run.info.run_id, "federated-val/accuracy")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == [line["federated-val"]["accuracy"] for line in metrics_lines(folder)]


def test_tensorboard_event_files_hold_every_round(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    flat = {**SMALL, "num-server-rounds": 2, "run.output-dir": str(tmp_path), "run.tracking": "tensorboard"}
    folder = run_in_process(flat).need_folder().path
    lines = metrics_lines(folder)
    events = EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    tags = events.Tags()
    assert {"test/macro-f1", "federated-val/accuracy", "site-0/evaluate/accuracy", "site-1/train/train-loss",
            "bytes-up", "seconds"} <= set(tags["scalars"])
    got = [(e.step, e.value) for e in events.Scalars("test/macro-f1")]
    assert got == [(line["round"], pytest.approx(line["global"]["macro-f1"], rel=1e-6)) for line in lines]
    train_loss = [e.value for e in events.Scalars("site-1/train/train-loss")]
    assert train_loss == pytest.approx([line["sites"]["1"]["train"]["train-loss"] for line in lines[1:]], rel=1e-6)
    assert "curves" in tags["images"]
    assert any(tag.startswith("configuration") for tag in tags["tensors"])  # the configuration, as text


def test_the_default_run_imports_no_tracking_library(tmp_path):
    """run.tracking=none (the default) never imports mlflow or tensorboard: the extras stay optional."""
    code = ("import sys; from omnirad_fl.server import app; from omnirad_fl.client import app as c; "
            "from omnirad_fl.simulations import report; "
            "print(sorted(m for m in ('mlflow', 'tensorboard', 'torch.utils.tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "[]"
