"""omnirad-sim: experiment files, sweeps that resume, and the report of a run."""

import json

import pytest

from omnirad.config import ConfigError
from omnirad_fl.simulations import sim, sweep

SWEEP = """
num-server-rounds: 2
model.feature-cache: true
data:
  num-sites: 2
  num-train: 100
sweep:
  grid:
    strategy.name: [fedavg, fedprox]
    data.alpha: [0.1]
  seeds: [0, 1]
  baselines: false
  out: {out}
"""


class RunningLink:
    """Stands in for the loopback SuperLink: already running, so the sweep starts none."""

    def healthy(self) -> bool:
        return True


def fake_runs(monkeypatch, stop_after: int | None = None) -> list[str]:
    """Replace the federated run itself (``flwr run``) by a row; the sweep's own bookkeeping is real."""
    calls: list[str] = []

    def run_one(overrides: str, label: str, port: int, reference: str = "") -> dict:
        if stop_after is not None and len(calls) == stop_after:
            raise KeyboardInterrupt  # the sweep is stopped half-way
        calls.append(f"{label} {overrides.split('run.seed=')[1].split()[0]}")
        score = {"macro-f1": 0.5}
        return {"global": score, "worst-site": score, "personalized": {}, "rejected": 0}

    monkeypatch.setattr(sweep, "run_one", run_one)
    monkeypatch.setattr(sweep, "local_superlink", lambda port: RunningLink())
    return calls


def test_a_stopped_sweep_resumes_without_redoing_finished_cells(tmp_path, monkeypatch):
    config = tmp_path / "sweep.yaml"
    config.write_text(SWEEP.format(out=tmp_path / "out"))
    first = fake_runs(monkeypatch, stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        sim.run_experiment(config, [])
    assert first == ["strategy.name=fedavg 0", "strategy.name=fedprox 0", "strategy.name=fedavg 1"]
    assert len((tmp_path / "out" / "results.jsonl").read_text().splitlines()) == 3

    second = fake_runs(monkeypatch)
    report = sim.run_experiment(config, [])
    assert second == ["strategy.name=fedprox 1"]  # only the cell without a result
    rows = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert sorted((r["variant"], r["seed"]) for r in rows) == [
        ("strategy.name=fedavg", 0), ("strategy.name=fedavg", 1), ("strategy.name=fedprox", 0), ("strategy.name=fedprox", 1)]
    assert {r["split"] for r in rows} == {"data.alpha=0.1"}
    text = report.read_text()
    assert "| strategy.name=fedprox | 0.500 ± 0.000 |" in text and "![results](results.png)" in text


def test_bad_experiment_files_are_refused_before_any_run(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("data: {alpha: -1}\n")
    with pytest.raises(ConfigError, match="'data.alpha'"):
        sim.load_experiment(config, [])
    config.write_text(SWEEP.format(out=tmp_path).replace("[fedavg, fedprox]", "[fedavg, fedmystery]"))
    with pytest.raises(ConfigError, match="fedmystery"):
        sim.run_experiment(config, [])  # every cell is checked before the first run
    config.write_text("sweep:\n  grid: {train.lr: [0.1]}\n  repeat: 3\n")
    with pytest.raises(ConfigError, match="known: grid, seeds, baselines, out"):
        sim.load_experiment(config, [])
    config.write_text("sweep:\n  grid: {model.weights: ['hf_hub:org/model']}\n")
    with pytest.raises(ConfigError, match="cannot be swept"):
        sim.load_experiment(config, [])
    with pytest.raises(ConfigError, match="quote it"):
        sim.load_experiment(config, ["run.name=@x"])
    with pytest.raises(ConfigError, match="no such configuration file"):
        sim.load_experiment(tmp_path / "missing.yaml", [])


@pytest.mark.slow
def test_omnirad_sim_on_a_shipped_configuration_writes_the_report(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from omnirad_fl.server.processes import free_loopback_port

    port = free_loopback_port()
    config = Path(__file__).resolve().parents[1] / "simulations" / "configs" / "quick.yaml"
    command = [str(Path(sys.executable).with_name("omnirad-sim")), str(config), f"run.output-dir={tmp_path}",
               f"model.cache-dir={tmp_path / 'cache'}", "--port", str(port)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    (folder,) = [p for p in tmp_path.iterdir() if (p / "summary.json").exists()]
    report = (folder / "report.md").read_text()
    assert f"Report: {folder / 'report.md'}" in completed.stdout
    assert "| final round's global model, server test |" in report and "| site 2 |" in report
    for image in ("curves.png", "sites.png", "partition.png", "confusion.png"):
        assert f"]({image})" in report and (folder / image).stat().st_size > 0


def test_a_segmentation_run_report_shows_predicted_masks(tmp_path):
    from omnirad.adapters import trainable_state
    from omnirad.configure import load_config
    from omnirad.models import new_model
    from omnirad_fl.server.run_folder import RunFolder
    from omnirad_fl.simulations.report import write_run_report

    cfg = load_config({"run.output-dir": str(tmp_path), "data.task": "segmentation", "model.adapter": "decoder",
                       "data.size": 32, "data.num-test": 8, "data.num-sites": 2})
    folder = RunFolder.create(cfg)
    folder.end_round(1, {"dice": 0.2, "iou": 0.1})
    folder.finish(trainable_state(new_model(cfg)), {"adapter": "decoder"})
    text = write_run_report(folder.path).read_text()
    assert "](overlays.png)" in text and "| final round's global model, server test | 0.200 | 0.100 |" in text
    assert (folder.path / "overlays.png").stat().st_size > 0


def test_a_captioning_run_report_shows_reference_and_generated_captions(tmp_path):
    from omnirad.adapters import trainable_state
    from omnirad.configure import load_config
    from omnirad.models import new_model
    from omnirad_fl.server.run_folder import RunFolder
    from omnirad_fl.simulations.report import write_run_report

    cfg = load_config({"run.output-dir": str(tmp_path), "data.task": "captioning", "model.adapter": "caption-decoder",
                       "model.caption-width": 32, "data.size": 32, "data.num-test": 8, "data.num-sites": 2})
    folder = RunFolder.create(cfg)
    folder.end_round(1, {"cider": 0.5, "bleu-4": 0.2, "rouge-l": 0.4, "finding-accuracy": 0.25})
    folder.finish(trainable_state(new_model(cfg)), {"adapter": "caption-decoder"})
    text = write_run_report(folder.path).read_text()
    assert "](captions.png)" in text and "| final round's global model, server test | 0.500 | 0.200 | 0.400 | 0.250 |" in text
    assert (folder.path / "captions.png").stat().st_size > 0


def test_a_multitask_report_has_each_tasks_sites_and_plots(tmp_path):
    from pathlib import Path

    from omnirad.config import read_config_file
    from omnirad.configure import load_config
    from omnirad.data.sites import task_info
    from omnirad.multitask import TaskGroup, task_config
    from omnirad_fl.server.multitask import initial_record, task_summary, write_tasks
    from omnirad_fl.server.run_folder import RunFolder
    from omnirad_fl.simulations.report import write_run_report
    from omnirad_fl.strategies.multitask import SCORE

    shipped = Path(__file__).resolve().parents[1] / "simulations" / "configs" / "multitask.yaml"
    flat = {**read_config_file(shipped), "run.output-dir": str(tmp_path), "data.num-test": 8, "data.num-train": 120}
    cfg = load_config(flat)
    folder = RunFolder.create(cfg)
    folder.track_tasks({"finding": "macro-f1", "lesions": "dice", "region": "macro-f1"}, SCORE,
                       {"finding": [2, 3], "lesions": [4, 5], "region": [0, 1]})
    folder.current.sites[0]["evaluate"] = {"num-examples": 10.0, "macro-f1": 0.3, "accuracy": 0.4, "auc": 0.6}
    folder.current.sites[4]["evaluate"] = {"num-examples": 10.0, "dice": 0.5, "iou": 0.4}
    folder.end_round(1, {"region/macro-f1": 0.25, "finding/macro-f1": 0.2, "lesions/dice": 0.5})
    groups = {name: TaskGroup(name, task_info(task_config(cfg, name).data), sites, sites)
              for name, sites in {"finding": (2, 3), "lesions": (4, 5), "region": (0, 1)}.items()}
    record, shared = initial_record(cfg, groups)
    write_tasks(folder.path, groups, len(shared))
    summary = folder.finish(record, task_summary(groups, record))
    assert summary["final-worst-site"]["region/macro-f1"] == 0.3 and summary["final-worst-site"]["lesions/dice"] == 0.5
    text = write_run_report(folder.path).read_text()
    assert "## Sites (last round): region" in text and "| site 4 | 10 | 0.500 | 0.400 |" in text
    for image in ("region-confusion.png", "finding-confusion.png", "lesions-overlays.png", "region-sites.png"):
        assert f"]({image})" in text and (folder.path / image).stat().st_size > 0
