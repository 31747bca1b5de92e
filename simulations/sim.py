"""``omnirad-sim CONFIG.yaml [key=value ...]``: an experiment from a configuration file, through
Flower's simulation, with a report.

The file holds configuration keys (flat ``data.alpha: 0.1`` or nested ``data: {alpha: 0.1}``). A
``sweep:`` section turns it into a sweep::

    sweep:
      grid:                          # every combination of these values is one cell
        strategy.name: [fedavg, fedprox]
        data.alpha: [0.1, 1.0]
      seeds: [0, 1, 2]               # default: run.seed
      baselines: true                # pooled and local-only training on the same splits
      out: results/my-sweep          # default: results/<file name>

Each cell's result is appended to ``<out>/results.jsonl`` when it finishes, so a sweep that was
stopped resumes with the first cell it has no result for. Keys under ``data.`` define the split,
so the baselines run once per split and seed; the other keys are the variants compared on it.

Input files (``data.site-files``, ``data.test-file``, ``data.root``, ``data.vocabulary``,
``model.weights``) given as relative paths are made absolute here, once: the federated runs execute
in the SuperLink's folder, not the user's. In the file they are read relative to the file's folder
(else, as before, the working folder where the file's folder has no such path); on the command
line, relative to the working folder.

``--ray-address HOST:PORT`` runs the sites on a Ray cluster started with ``ray start --head`` (and
``ray start --address HOST:PORT`` on the other machines) instead of on this machine's Ray; run it on
a node of that cluster. See docs/ecosystem.md, "Simulation on a Ray cluster".
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from omnirad.config import ConfigError, flatten_keys, parse_overrides, read_config_tree, toml_literal
from omnirad_fl.server.run_config import load_run_config
from omnirad_fl.simulations.demo import run_simulation
from omnirad_fl.simulations.flower_local import (
    DEFAULT_HTTP_PORT,
    RAY_ADDRESS_ENV,
    ray_cluster_address,
    superlink_answers,
)
from omnirad_fl.simulations.report import write_run_report
from omnirad_fl.simulations.sweep import run_sweep


@dataclass
class SweepPlan:
    grid: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    baselines: bool = True
    out: str = ""


INPUT_PATHS = ("data.site-files", "data.test-file", "data.root", "data.vocabulary", "model.weights")


def absolute_paths(value: Any, key: str, *bases: Path) -> Any:
    """An input path key's value with each relative path made absolute: the first of ``bases`` in
    which it exists, else the first base (the run's checks then name the missing file)."""
    if key not in INPUT_PATHS or not isinstance(value, str) or not value.strip():
        return value
    if key == "model.weights" and (value == "hub" or value.startswith("hf_hub:")):
        return value

    def anchored(item: str) -> str:
        path = Path(item.strip()).expanduser()
        if path.is_absolute():
            return str(path)
        found = [base / path for base in bases if (base / path).exists()]
        return str((found[0] if found else bases[0] / path).resolve())

    return ",".join(anchored(item) for item in value.split(",")) if key == "data.site-files" else anchored(value)


def load_experiment(path: Path, overrides: Sequence[str]) -> tuple[dict[str, Any], SweepPlan | None]:
    """The run keys (validated, input paths made absolute) and the sweep plan, if the file has one."""
    tree = read_config_tree(path)
    sweep_section = tree.pop("sweep", None)
    here, folder = Path.cwd(), path.resolve().parent
    flat = {key: absolute_paths(value, key, folder, here) for key, value in flatten_keys(tree).items()}
    flat.update({key: absolute_paths(value, key, here) for key, value in parse_overrides(overrides).items()})
    cfg = load_run_config(flat)
    if sweep_section is None:
        return flat, None
    try:
        plan = SweepPlan(**{k: v for k, v in sweep_section.items()})
    except TypeError as err:
        raise ConfigError(f"{path}: sweep: {err} (known: grid, seeds, baselines, out)") from err
    for key, values in plan.grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: sweep.grid.{key}: expected a list of values, got {values!r}")
        plan.grid[key] = [absolute_paths(value, key, folder, here) for value in values]
        awkward = [v for v in values if any(c in str(v) for c in ",:")]
        if awkward:  # cells are written label:key=value,... (every cell is validated before the first run)
            raise ConfigError(f"{path}: sweep.grid.{key}: {awkward[0]!r}: values with ',' or ':' cannot be swept; "
                              "set such a key outside the grid")
    plan.seeds = plan.seeds or [cfg.run.seed]
    plan.out = plan.out or str(Path("results") / path.stem)
    return flat, plan


def cell_specs(grid: dict[str, list[Any]], keys: list[str]) -> list[str]:
    """``label:key=value,...`` for every combination of ``keys``' values (one unnamed cell if none)."""
    if not keys:
        return ["as configured:"]
    specs = []
    for values in itertools.product(*(grid[k] for k in keys)):
        label = ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))
        specs.append(f"{label}:" + ",".join(f"{k}={toml_literal(v)}" for k, v in zip(keys, values, strict=True)))
    return specs


def as_overrides(flat: dict[str, Any], without: set[str]) -> str:
    return " ".join(f"{k}={toml_literal(v)}" for k, v in sorted(flat.items()) if k not in without)


def run_experiment(config: Path, overrides: Sequence[str], port: int = DEFAULT_HTTP_PORT) -> Path:
    """Run the experiment; returns its report."""
    flat, plan = load_experiment(config, overrides)
    if plan is None:
        summary = run_simulation(as_overrides(flat, set()), port)
        if summary is None:
            raise RuntimeError("the run did not finish: no summary.json was written (see the log above)")
        return write_run_report(summary.parent)
    split_keys = [k for k in plan.grid if k.startswith("data.")]
    variant_keys = [k for k in plan.grid if not k.startswith("data.")]
    out = Path(plan.out).resolve()
    rows = run_sweep(cell_specs(plan.grid, variant_keys), cell_specs(plan.grid, split_keys), plan.seeds,
                     shared_overrides=as_overrides(flat, set(plan.grid) | {"run.seed"}), out=out / "results.jsonl",
                     with_references=plan.baselines, port=port)
    run_reports = [write_run_report(Path(r["run-folder"])) for r in rows
                   if r.get("run-folder") and (Path(r["run-folder"]) / "summary.json").is_file()]
    lines = [f"# Sweep report: {config.name}", "", f"Configuration: `{config}`; grid: "
             + "; ".join(f"`{k}` in {v}" for k, v in plan.grid.items()) + f"; seeds {plan.seeds}.", "",
             "Mean ± standard deviation over seeds. **global**: final global model on the server's test set; "
             "**worst site**: the lowest site-validation score; **personalized**: the sites' own models "
             "(FedPer/FedBN) or the global adapter fine-tuned locally (`personalization.finetune-epochs`).", "",
             (out / "results.md").read_text(), "", "![results](results.png)", "", "## Runs", ""]
    lines += [f"- [{r.parent.name}]({r.relative_to(out) if r.is_relative_to(out) else r})" for r in run_reports]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


@contextmanager
def attached_to_ray_cluster(address: str, port: int) -> Iterator[None]:
    """The simulations started inside attach to the Ray cluster at ``address``, checked first (Ray's
    ``RAY_ADDRESS``, restored after: a caller in the same process keeps its own). A SuperLink
    already answering on ``port`` would run them on its own Ray, so it is refused."""
    checked = ray_cluster_address(address)
    if superlink_answers(port):
        raise ConfigError(f"--ray-address {address}: a SuperLink already runs on 127.0.0.1:{port} and its "
                          "simulations use the Ray it was started with; stop it or give another --port")
    before = os.environ.get(RAY_ADDRESS_ENV)
    os.environ[RAY_ADDRESS_ENV] = checked
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(RAY_ADDRESS_ENV, None)
        else:
            os.environ[RAY_ADDRESS_ENV] = before


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omnirad-sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="experiment file (YAML); see simulations/configs/")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="configuration overrides, e.g. data.alpha=0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_HTTP_PORT, help="loopback port of the simulation's SuperLink")
    parser.add_argument("--ray-address", metavar="HOST:PORT", default="",
                        help="run the sites on this Ray cluster (its head's address; `ray start --head`) "
                             "instead of on this machine's Ray; sets RAY_ADDRESS for the runs")
    args = parser.parse_args(argv)
    try:
        with attached_to_ray_cluster(args.ray_address, args.port) if args.ray_address else nullcontext():
            report = run_experiment(args.config, args.overrides, args.port)
    except ConfigError as err:
        print(f"omnirad-sim: {err}", file=sys.stderr)
        return 2
    except click.ClickException as err:  # Flower's parser of key=value strings
        print(f"omnirad-sim: {err.message}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        print(f"omnirad-sim: {err}", file=sys.stderr)
        return 1
    print(f"\nReport: {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
