"""Plots of a run, for the people who would rather look than read metrics.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_curves(rounds: list[dict[str, Any]], path: Path, metrics: tuple[str, ...]) -> None:
    """The task's headline metrics on the test set, and the first one on each site's validation split, per round."""
    x = [r["round"] for r in rounds]
    fig, (ax_global, ax_sites) = plt.subplots(1, 2, figsize=(11, 4))
    for key in metrics:
        ax_global.plot(x, [r["global"].get(key) for r in rounds], marker="o", label=f"test {key}")
    ax_global.set(title="Global model on the held-out test set", xlabel="round", ylim=(0, 1))
    ax_global.legend()
    sites = sorted({s for r in rounds for s in r["sites"]}, key=int)
    for site in sites:
        values = [r["sites"].get(site, {}).get("evaluate", {}).get(metrics[0]) for r in rounds]
        ax_sites.plot(x, values, marker=".", label=f"site {site}")
    ax_sites.set(title="Global model on each site's validation split", xlabel="round", ylabel=metrics[0], ylim=(0, 1))
    ax_sites.legend(fontsize="small", ncol=2)
    for ax in (ax_global, ax_sites):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


VIEWS = (("global", "global (server test)"), ("worst-site", "worst site"), ("personalized", "personalized"))


def plot_sweep(summary: dict[str, dict[str, dict[str, tuple[float, float]]]], path: Path, metric: str) -> None:
    """One panel per split: each variant's mean (bar) and standard deviation over seeds (error bar)
    for the three views of ``simulations.sweep``; ``summary[split][variant][view] = (mean, std)``."""
    splits = list(summary)
    fig, axes = plt.subplots(len(splits), 1, figsize=(12, 3.4 * len(splits)), squeeze=False)
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
    plt.close(fig)
