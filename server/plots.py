"""Plots of a run, for the people who would rather look than read metrics.jsonl."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # figures without pyplot: no global backend to switch, safe in notebooks
from matplotlib.ticker import MaxNLocator


def plot_curves(rounds: list[dict[str, Any]], path: Path, metrics: tuple[str, ...]) -> None:
    """The task's headline metrics on the test set, and the first one on each site's validation split,
    per round; in a multi-task run each site shows its own task's metric."""
    x = [r["round"] for r in rounds]
    fig = Figure(figsize=(11, 4))
    ax_global, ax_sites = fig.subplots(1, 2)
    for key in metrics:
        ax_global.plot(x, [r["global"].get(key) for r in rounds], marker="o", label=f"test {key}")
    ax_global.set(title="Global model on the held-out test set", xlabel="round", ylim=(0, 1))
    ax_global.legend()
    sites = sorted({s for r in rounds for s in r["sites"]}, key=int)
    names = list(dict.fromkeys(key.rpartition("/")[2] for key in metrics))  # a multi-task run's: unprefixed at sites
    shown = set()
    for site in sites:
        reported = {k for r in rounds for k in r["sites"].get(site, {}).get("evaluate", {})}
        name = next((n for n in names if n in reported), names[0])
        shown.add(name)
        values = [r["sites"].get(site, {}).get("evaluate", {}).get(name) for r in rounds]
        ax_sites.plot(x, values, marker=".", label=f"site {site}" if len(names) == 1 else f"site {site} ({name})")
    ylabel = ", ".join(n for n in names if n in shown) or names[0]
    ax_sites.set(title="Global model on each site's validation split", xlabel="round", ylabel=ylabel, ylim=(0, 1))
    if sites:
        ax_sites.legend(fontsize="small", ncol=2)
    for ax in (ax_global, ax_sites):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


VIEWS = (("global", "global (server test)"), ("worst-site", "worst site"), ("personalized", "personalized"))


def plot_sweep(summary: dict[str, dict[str, dict[str, tuple[float, float]]]], path: Path, metric: str) -> None:
    """One panel per split: each variant's mean (bar) and standard deviation over seeds (error bar)
    for the three views of ``simulations.sweep``; ``summary[split][variant][view] = (mean, std)``."""
    splits = list(summary)
    fig = Figure(figsize=(12, 3.4 * len(splits)))
    axes = fig.subplots(len(splits), 1, squeeze=False)
    width = 0.27
    for ax, split in zip(axes[:, 0], splits, strict=True):
        variants = list(summary[split])
        for i, (view, label) in enumerate(VIEWS):
            stats = [summary[split][v].get(view, (float("nan"), 0.0)) for v in variants]
            ax.bar([x + (i - 1) * width for x in range(len(variants))], [m for m, _ in stats], width,
                   yerr=[s for _, s in stats], capsize=2, label=label)
        ax.set_xticks(range(len(variants)), variants, rotation=20, ha="right", fontsize="small")
        ax.set(title=split, ylabel=metric, ylim=(0, 1))
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(ncol=3, fontsize="small", loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_site_bars(per_site: dict[str, dict[str, float]], path: Path, metric: str) -> None:
    """The final global model on each site's validation split, next to each site's size."""
    sites = sorted(per_site, key=int)
    fig = Figure(figsize=(11, 3.6))
    ax_metric, ax_size = fig.subplots(1, 2)
    ax_metric.bar(sites, [per_site[s].get(metric, float("nan")) for s in sites], color="tab:blue")
    ax_metric.set(title="Final model on each site's validation split", xlabel="site", ylabel=metric, ylim=(0, 1))
    ax_size.bar(sites, [per_site[s].get("num-examples", 0) for s in sites], color="tab:gray")
    ax_size.set(title="Validation images per site", xlabel="site", ylabel="images")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_confusion(matrix: Any, names: tuple[str, ...], path: Path) -> None:
    """Rows: true class, columns: predicted class, shaded by the share of each true class."""
    shares = matrix / matrix.sum(axis=1, keepdims=True).clip(min=1)
    size = 2.2 + 0.55 * len(names)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center",
                    color="white" if shares[i, j] > 0.5 else "black", fontsize="small")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize="small")
    ax.set_yticks(range(len(names)), names, fontsize="small")
    ax.set(xlabel="predicted", ylabel="true", title="Final global model, server test set")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_captions(images: Any, references: Any, generated: Any, path: Path) -> None:
    """Captioning: each test image with its reference caption and the final model's."""
    count = len(images)
    fig = Figure(figsize=(2.6 * count, 3.6))
    axes = fig.subplots(1, count, squeeze=False)
    for k in range(count):
        ax = axes[0, k]
        ax.imshow(images[k], cmap="gray")
        text = [textwrap.fill(f"{label}: {caption}", 36) for label, caption in (("reference", references[k]),
                                                                                    ("generated", generated[k]))]
        ax.set_title("\n".join(text), fontsize="x-small", loc="left")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_overlays(images: Any, truth: Any, predicted: Any, path: Path) -> None:
    """Segmentation: each test image with its true mask and the final model's prediction."""
    count = len(images)
    fig = Figure(figsize=(2.2 * count, 4.6))
    axes = fig.subplots(2, count, squeeze=False)
    for k in range(count):
        for row, (masks, title) in enumerate(((truth, "true"), (predicted, "predicted"))):
            ax = axes[row, k]
            ax.imshow(images[k], cmap="gray")
            ax.imshow(masks[k], cmap="autumn", alpha=0.45 * (masks[k] > 0), vmin=0, vmax=max(1, int(masks.max())))
            ax.set_title(f"{title} {k}", fontsize="small")
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_cross_site(matrix: dict[str, dict[str, float]], metric: str, path: Path) -> None:
    """Cross-site evaluation: each model (row) on each site's validation split (column), by ``metric``."""
    models = list(matrix)
    sites = sorted({site for row in matrix.values() for site in row}, key=int)
    values = [[matrix[m].get(s, float("nan")) for s in sites] for m in models]
    fig = Figure(figsize=(2.5 + 0.8 * len(sites), 1.5 + 0.45 * len(models)))
    ax = fig.subplots()
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="small",
                    color="black" if value > 0.6 else "white")
    ax.set_xticks(range(len(sites)), [f"site {s}" for s in sites], fontsize="small")
    ax.set_yticks(range(len(models)), models, fontsize="small")
    ax.set(xlabel="validation split of", ylabel="model", title=f"Cross-site evaluation: {metric}")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
