"""Experiment tracking: a run's numbers written to TensorBoard or MLflow as well as to metrics.jsonl.

``run.tracking`` picks the tracker (``none``, the default; ``tensorboard``; ``mlflow``). Both write
to local files only, nothing leaves the machine and no server is needed:

- ``tensorboard``: event files in the run folder's ``tensorboard/`` (``tensorboard --logdir runs``
  shows every run of an output folder side by side);
- ``mlflow``: MLflow's SQLite store beside the run folders, ``<run.output-dir>/mlflow.db``, with
  artifacts in ``<run.output-dir>/mlartifacts/``; the experiment is ``run.tracking-experiment`` or the
  output folder's name, so a sweep (whose cells share one output folder) is one experiment with a
  run per cell (``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``).

Both libraries are optional extras (``pip install 'omnirad-fl[tensorboard]'`` / ``[mlflow]``): they
are imported only when a run asks for them. The run folder's ``tracking.json`` names the tracker's
run, so a resumed run and a report written later go on writing to the same one.

Each round's line of metrics.jsonl becomes scalars at step ``round``: ``test/<metric>`` (the
global model on the server's test set), ``federated-val/<metric>``, ``train/<metric>``,
``site-<id>/<phase>/<metric>`` (each site's own, phase ``train`` or ``evaluate``),
``bytes-up``, ``bytes-down``, ``seconds``, ``failures``; the resolved configuration's flat keys are
the run's parameters; curves, report and summary are artifacts.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from omnirad.config.io import to_flat
from omnirad.config.schema import Config, RunConfig
from omnirad.errors import ConfigError
from omnirad.registry import Registry

TRACKING_FILE = "tracking.json"
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
NONE = "none"


def round_scalars(line: Mapping[str, Any]) -> dict[str, float]:
    """One line of metrics.jsonl as flat scalar names and values (non-finite values are left out:
    neither store plots them)."""
    scalars: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return
        scalars[name] = float(value)

    for group, prefix in (("global", "test"), ("federated-val", "federated-val"), ("train", "train")):
        for name, value in line.get(group, {}).items():
            put(f"{prefix}/{name}", value)
    for site, entry in line.get("sites", {}).items():
        for phase, values in entry.items():
            if isinstance(values, Mapping):
                for name, value in values.items():
                    put(f"site-{site}/{phase}/{name}", value)
            else:
                put(f"site-{site}/{phase}", values)
    for name in ("bytes-up", "bytes-down", "seconds"):
        put(name, line.get(name))
    put("failures", len(line.get("failures", [])))
    put("rejected-updates", len(line.get("rejected", [])))
    return scalars


class Tracker(ABC):
    """Where a run's numbers go besides the run folder; ``record`` is what ``tracking.json`` keeps
    of it, so it can be reopened."""

    record: dict[str, Any]

    @abstractmethod
    def log_params(self, params: Mapping[str, Any]) -> None: ...

    @abstractmethod
    def log_round(self, step: int, scalars: Mapping[str, float]) -> None: ...

    @abstractmethod
    def log_artifacts(self, files: Iterable[Path]) -> None: ...

    @abstractmethod
    def close(self, failed: bool = False) -> None: ...


class TensorBoardTracker(Tracker):
    """Event files under ``<run folder>/tensorboard`` (torch's ``SummaryWriter``)."""

    def __init__(self, folder: Path, record: Mapping[str, Any] | None = None, after_step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter  # optional: the `tensorboard` extra

        self.record = {"kind": "tensorboard", "logdir": TENSORBOARD_DIR}
        # a resumed run: whatever was written after its checkpoint's round is written again
        self.writer = SummaryWriter(str(folder / TENSORBOARD_DIR), purge_step=after_step + 1 if record else None)

    def log_params(self, params: Mapping[str, Any]) -> None:
        table = "\n".join(f"| {key} | {value} |" for key, value in sorted(params.items()))
        self.writer.add_text("configuration", "| key | value |\n|---|---|\n" + table, 0)

    def log_round(self, step: int, scalars: Mapping[str, float]) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def log_artifacts(self, files: Iterable[Path]) -> None:
        import numpy as np
        from PIL import Image

        for file in files:
            if file.suffix == ".png":
                pixels = np.asarray(Image.open(file).convert("RGB"))
                self.writer.add_image(file.stem, pixels, dataformats="HWC")
            elif file.suffix in (".md", ".json"):
                self.writer.add_text(file.name, file.read_text())
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class MlflowTracker(Tracker):
    """A run in MLflow's SQLite store beside the run folders (``MlflowClient``; no server)."""

    def __init__(self, folder: Path, experiment: str, record: Mapping[str, Any] | None = None,
                 after_step: int = 0) -> None:
        from mlflow.tracking import MlflowClient  # optional: the `mlflow` extra

        base = folder.parent
        uri = f"sqlite:///{base / MLFLOW_DB}"
        self.client = MlflowClient(tracking_uri=uri)
        if record:
            self.run_id = str(record["run-id"])
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            name = experiment or base.name
            found = self.client.get_experiment_by_name(name)
            experiment_id = (found.experiment_id if found is not None else
                             self.client.create_experiment(name, artifact_location=(base / MLFLOW_ARTIFACTS).as_uri()))
            self.run_id = self.client.create_run(experiment_id, run_name=folder.name,
                                                 tags={"omnirad.run-folder": str(folder)}).info.run_id
        self.record = {"kind": "mlflow", "tracking-uri": uri, "run-id": self.run_id,
                       "experiment": experiment or base.name}

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        new = [Param(key, str(value)) for key, value in sorted(params.items()) if key not in existing]
        for start in range(0, len(new), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=new[start:start + 100])

    def log_round(self, step: int, scalars: Mapping[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name, value, now, step) for name, value in scalars.items()]
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def log_artifacts(self, files: Iterable[Path]) -> None:
        for file in files:
            self.client.log_artifact(self.run_id, str(file))

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


# run.tracking -> how to open its tracker for a run folder (None: no tracker)
Opener = Callable[[Config, Path, Mapping[str, Any] | None, int], Tracker | None]
TRACKERS: Registry[Opener] = Registry("run.tracking")
TRACKERS.add(NONE, lambda cfg, folder, record, after: None)
TRACKERS.add("tensorboard", lambda cfg, folder, record, after: TensorBoardTracker(folder, record, after))
TRACKERS.add("mlflow", lambda cfg, folder, record, after: MlflowTracker(folder, cfg.run.tracking_experiment,
                                                                        record, after))
EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}  # module, extra


def check_tracking(run: RunConfig) -> None:
    """``run.tracking`` names a tracker whose library is installed (they are optional extras)."""
    TRACKERS.check(run.tracking)
    if run.tracking in EXTRAS:
        import importlib.util

        module, extra = EXTRAS[run.tracking]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"run.tracking='{run.tracking}': the {module} package is not installed; "
                              f"pip install 'omnirad-fl[{extra}]' (or set run.tracking='none')")


def open_tracker(cfg: Config, folder: Path, after_step: int = 0) -> Tracker | None:
    """The run folder's tracker: the one ``tracking.json`` names when the folder has one (a resumed
    run, whose rounds after ``after_step`` run again), else a new one of ``run.tracking``, recorded
    there, with the configuration as its parameters; None with ``run.tracking=none``. (Whether
    the tracker's library is installed was checked with the configuration: ``check_tracking``.)"""
    recorded = read_record(folder)
    if recorded is not None and recorded.get("kind") != cfg.run.tracking:
        recorded = None  # the run changed trackers: start the new one afresh
    tracker = TRACKERS[cfg.run.tracking](cfg, folder, recorded, after_step)
    if tracker is not None:
        (folder / TRACKING_FILE).write_text(json.dumps(tracker.record, indent=2))
        tracker.log_params(to_flat(cfg))
    return tracker


def read_record(folder: Path) -> dict[str, Any] | None:
    path = folder / TRACKING_FILE
    return dict(json.loads(path.read_text())) if path.is_file() else None


def reopen_tracker(cfg: Config, folder: Path) -> Tracker | None:
    """The tracker a finished run wrote to (``tracking.json``), to add what was made after it (the
    report); None when the run had none or its library is not installed here."""
    recorded = read_record(folder)
    if recorded is None or recorded.get("kind") not in EXTRAS:
        return None
    try:
        return TRACKERS[str(recorded["kind"])](cfg, folder, recorded, 1 << 62)
    except ImportError:
        return None
