"""A Markdown report of a finished run, from its run folder alone (never from terminal output).

    python -m omnirad_fl.simulations.report runs/<run folder>      # writes <run folder>/report.md

Tables: the shipped model's (the round best on federated validation) and the final round's global
metrics, the worst site and the sites' own (personalized) validation, bytes, time and memory, and
every site's final numbers. Plots: metrics per round (``curves.png``), per-site bars, the
partition (simulated splits), and the shipped global model's
confusion matrix on the server's test set (classification) or its masks on test images
(segmentation).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from sklearn.metrics import confusion_matrix

from omnirad.captions import decode_captions
from omnirad.config import Config
from omnirad.configure import load_config
from omnirad.data.sites import task_info
from omnirad.data.sources import source_of
from omnirad.evaluation import CentralEvaluator
from omnirad.methods import site_method
from omnirad.multitask import TaskGroup, group_view, is_multitask, task_config
from omnirad.run_files import read_broadcast
from omnirad.tracking import reopen_tracker
from omnirad_fl.server.multitask import read_tasks
from omnirad_fl.server.plots import plot_captions, plot_confusion, plot_overlays, plot_site_bars

OVERLAY_IMAGES = 6


def read_run(folder: Path) -> tuple[Config, list[dict[str, Any]], dict[str, Any]]:
    """A run folder's configuration, per-round lines and summary; says what is missing."""
    missing = [name for name in ("config.yaml", "metrics.jsonl", "summary.json") if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: not a finished run folder (missing {', '.join(missing)})")
    cfg = load_config(OmegaConf.to_container(OmegaConf.load(folder / "config.yaml")))
    rounds = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return cfg, rounds, json.loads((folder / "summary.json").read_text())


def metric_table(rows: dict[str, dict[str, float]], metrics: Sequence[str]) -> list[str]:
    lines = ["| | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for label, values in rows.items():
        cells = [("-" if m not in values else f"{values[m]:.0f}" if m == "num-examples" else f"{values[m]:.3f}")
                 for m in metrics]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def model_plot(cfg: Config, folder: Path, final: dict[str, torch.Tensor], prefix: str = "") -> tuple[str, str]:
    """The confusion matrix or mask overlays of the global model ``final`` (the shipped one); (file, caption) or a reason."""
    if cfg.personalization.mode == "fedper" or site_method(cfg.strategy) is not None:
        return "", "no single global model to plot (FedPer keeps heads at the sites; spectral prompts need the bank)"
    evaluator = CentralEvaluator(cfg, read_broadcast(folder))
    if evaluator.test is None:
        return "", "no server test set (data.test-file is empty)"
    task = task_info(cfg.data)
    test, outputs = evaluator.predictions(final)
    if task.segmentation:
        path = folder / f"{prefix}overlays.png"
        images = test.images[:OVERLAY_IMAGES]
        grey = images if images.ndim == 3 else images.mean(axis=-1)
        plot_overlays(grey, test.labels[:OVERLAY_IMAGES], outputs[:OVERLAY_IMAGES].argmax(dim=1).numpy(), path)
        return path.name, "shipped global model: true and predicted masks on the first test images"
    if task.captioning:
        path = folder / f"{prefix}captions.png"
        images = test.images[:OVERLAY_IMAGES]
        generated = outputs[:OVERLAY_IMAGES].long().numpy()
        plot_captions(images if images.ndim == 3 else images.mean(axis=-1),
                      decode_captions(test.labels[:OVERLAY_IMAGES], task.label_names),
                      decode_captions(generated, task.label_names), path)
        return path.name, "shipped global model: reference and generated captions of the first test images"
    if task.kind.startswith("multi-label"):
        return "", "multi-label task: per-label metrics are in the tables (no single confusion matrix)"
    predicted = outputs.argmax(dim=1).numpy() if outputs.shape[1] > 1 else (torch.sigmoid(outputs[:, 0]) > 0.5).long().numpy()
    names = task.label_names if len(task.label_names) > 1 else ("negative", "positive")
    matrix = confusion_matrix(np.asarray(test.labels).reshape(-1), predicted, labels=range(len(names)))
    path = folder / f"{prefix}confusion.png"
    plot_confusion(matrix, names, path)
    return path.name, "shipped global model on the server's test set"


def report_tasks(cfg: Config, folder: Path) -> dict[str, TaskGroup]:
    """The run's task (under the name ""), or in a multi-task run the groups the server formed."""
    if not is_multitask(cfg.multitask):
        return {"": TaskGroup("", task_info(cfg.data), (), ())}
    return read_tasks(folder)


def cross_site_section(cross: dict[str, Any] | None, folder: Path) -> list[str]:
    """run.cross-site: each model's selection metric on each site's validation split."""
    if not cross:
        return []
    metric, sites = cross["metric"], cross["sites"]
    lines = ["## Cross-site evaluation", "",
             f"Each model (rows) on each site's validation split (columns), {metric}; a site's own model on its own "
             "split is the diagonal of the site rows.", "",
             "| model | " + " | ".join(f"site {s}" for s in sites) + " |", "|---|" + "---|" * len(sites)]
    for name, row in cross["matrix"].items():
        cells = [f"{row[s][metric]:.3f}" if metric in row.get(s, {}) else "-" for s in sites]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if (folder / "cross-site.png").exists():
        lines += ["", "![cross-site evaluation](cross-site.png)"]
    return [*lines, ""]


def write_run_report(folder: Path) -> Path:
    cfg, rounds, summary = read_run(folder)
    tasks = report_tasks(cfg, folder)
    metrics = [(f"{name}/" if name else "") + m for name, group in tasks.items() for m in group.spec.headline_metrics]
    last = rounds[-1]
    d, m = cfg.data, cfg.model
    lines = [f"# Run report: {folder.name}", "",
             f"{d.dataset} data, {'natural' if source_of(d.dataset).natural_split else d.partition} split over "
             f"{d.num_sites} sites, {summary['rounds']} rounds of {cfg.train.local_epochs} local epochs; "
             f"{m.encoder} ({summary.get('weights', m.weights or 'random init')}) with a {m.adapter} adapter; "
             f"strategy {cfg.strategy.name}, personalization {cfg.personalization.mode}, seed {cfg.run.seed}.", "",
             "## Results", ""]
    ship = summary.get("shipped") or {}
    views = {f"shipped model (round {ship.get('round', '?')}, {ship.get('selected-by', '')}), server test":
             ship.get("global", {}),
             "final round's global model, server test": summary.get("final", {}),
             "sites' validation, mean (personalized models where kept)": summary.get("final-federated-val", {}),
             "worst site's validation": summary.get("final-worst-site", {})}
    lines += metric_table(views, metrics)
    peak = summary.get("peak-rss-mb", {})
    per_task = summary.get("task-adapter-bytes", {})
    adapter = (", ".join(f"{name} {size / 1e3:,.1f} kB" for name, size in per_task.items()) if per_task
               else f"{summary.get('adapter-parameter-bytes', 0) / 1e3:,.1f} kB")
    lines += ["", f"Sent by a site per round: {summary['bytes-up-per-site-round'] / 1e3:,.1f} kB "
              f"(adapter {adapter}; the encoder, which never moves, "
              f"{summary.get('encoder-parameter-bytes', 0) / 1e6:,.1f} MB). Total up {summary['bytes-up'] / 1e6:,.2f} MB, "
              f"down {summary['bytes-down'] / 1e6:,.2f} MB. Wall time {summary['wall-seconds']:.0f} s; peak memory "
              f"server {peak.get('server', 0):.0f} MB, a site {peak.get('clients', 0):.0f} MB.", ""]
    if summary.get("failures") or summary.get("rejected-updates"):
        lines += ["Failures and rejected updates:", ""]
        lines += [f"- {f}" for f in summary.get("failures", [])]
        lines += [f"- round {r}: {reason}" for r, reasons in summary.get("rejected-updates", {}).items() for reason in reasons]
        lines.append("")
    per_site = {s: v.get("evaluate", {}) for s, v in last["sites"].items()}
    final = load_file(folder / ship.get("adapter", "final_adapter.safetensors"))  # the model a site receives
    plots = ["", "## Plots", "", "![metrics per round](curves.png)", ""]
    for name, group in tasks.items():
        task = group.spec
        sites = [s for s in sorted(per_site, key=int) if not name or int(s) in group.sites]
        lines += [f"## Sites (last round){': ' + name if name else ''}", ""]
        lines += metric_table({f"site {s}": per_site[s] for s in sites}, ["num-examples", *task.headline_metrics]) + [""]
        if any(per_site[s] for s in sites):
            plot_site_bars({s: per_site[s] for s in sites}, folder / f"{name}{'-' if name else ''}sites.png", task.selection_metric)
            plots += [f"![each site{' of ' + name if name else ''}]({name}{'-' if name else ''}sites.png)", ""]
        task_cfg = task_config(cfg, name, task) if name else cfg
        plot_file, caption = model_plot(task_cfg, folder, group_view(final, name) if name else final, f"{name}-" if name else "")
        plots += [f"![{name + ': ' if name else ''}{caption}]({plot_file})" if plot_file else f"({caption})", ""]
    if (folder / "partition.png").exists():
        plots += ["![partition](partition.png)", ""]
    lines += cross_site_section(summary.get("cross-site"), folder)
    lines += plots
    report = folder / "report.md"
    report.write_text("\n".join(lines))
    tracker = reopen_tracker(cfg, folder)  # run.tracking: the report and its plots join the run's artifacts
    if tracker is not None:
        tracker.log_artifacts([report, *sorted(p for p in folder.glob("*.png") if f"({p.name})" in report.read_text())])
        tracker.close()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnirad_fl.simulations.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="run folders")
    args = parser.parse_args(argv)
    for folder in args.folders:
        print(f"wrote {write_run_report(folder)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
