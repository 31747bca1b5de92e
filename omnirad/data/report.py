"""What each site holds: sample counts and label histograms, as a table, JSON and a plot.

Non-IID studies are only as readable as their splits; the report is printed at the start of a
run and written to its folder (``partition.json``, ``partition.png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np  # noqa: E402
from matplotlib import colormaps
from matplotlib.figure import Figure  # figures without pyplot: no global backend to switch, safe in notebooks


def label_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    """Samples per class; for multi-label (N, L) 0/1 labels, positives per label."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        return cast(list[int], labels.sum(axis=0).astype(int).tolist())
    return cast(list[int], np.bincount(labels.reshape(-1), minlength=num_classes).tolist())


def partition_report(labels: np.ndarray, parts: list[np.ndarray], class_names: tuple[str, ...]) -> dict[str, Any]:
    return {
        "class-names": list(class_names),
        "sites": [
            {"site": i, "num-samples": int(len(p)), "label-counts": label_counts(labels[p], len(class_names))}
            for i, p in enumerate(parts)
        ],
    }


def format_report(report: dict[str, Any], width: int = 8) -> str:
    """A compact table: one row per site, one column per class."""
    names = [n[:width] for n in report["class-names"]]
    lines = [f"{'site':>4} {'samples':>7}  " + " ".join(f"{n:>{width}}" for n in names)]
    for site in report["sites"]:
        counts = " ".join(f"{c:>{width}}" for c in site["label-counts"])
        lines.append(f"{site['site']:>4} {site['num-samples']:>7}  {counts}")
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: Path, title: str = "") -> None:
    """Stacked bars: each site's label mix, bar height = its number of samples."""
    sites = report["sites"]
    counts = np.array([s["label-counts"] for s in sites], dtype=float)
    fig = Figure(figsize=(max(4, 0.6 * len(sites) + 2), 3.5))
    ax = fig.subplots()
    bottom = np.zeros(len(sites))
    colours = colormaps["tab20"]
    for k, name in enumerate(report["class-names"]):
        ax.bar([str(s["site"]) for s in sites], counts[:, k], bottom=bottom, label=name, color=colours(k % 20))
        bottom += counts[:, k]
    ax.set(xlabel="site", ylabel="samples", title=title or "Samples per site and label")
    ax.legend(fontsize="small", bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
