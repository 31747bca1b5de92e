"""Draw a grid of embedded-dataset samples (rows: imaging styles; columns: regions and findings).

    python simulations/studies/plot_embedded.py docs/embedded-samples.png [--size 96]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # figures without pyplot: no global backend to switch, safe in notebooks

from omnirad.data.synthetic import CLASS_NAMES, FINDING_NAMES, MODALITIES, generate  # noqa: E402


def plot_samples(path: Path, size: int = 96, columns: int = 8) -> None:
    split = generate(len(CLASS_NAMES) * len(MODALITIES) * len(FINDING_NAMES), size=size, seed=0)
    fig = Figure(figsize=(2 * columns, 2.1 * len(MODALITIES)))
    axes = fig.subplots(len(MODALITIES), columns)
    for row, _ in enumerate(MODALITIES):
        for col in range(columns):  # every region, and every finding twice
            label, finding = col % len(CLASS_NAMES), (col // 2) % len(FINDING_NAMES)
            i = np.flatnonzero((split.modalities == row) & (split.labels == label) & (split.findings == finding))[0]
            ax = axes[row, col]
            ax.imshow(split.images[i], cmap="gray", vmin=0, vmax=255)
            ax.contour(split.masks[i] == 2, levels=[0.5], colors="red", linewidths=0.8)
            ax.set_title(f"{MODALITIES[row]} · {CLASS_NAMES[split.labels[i]]}\n{FINDING_NAMES[split.findings[i]]}", fontsize=8)
            ax.axis("off")
    fig.suptitle("Embedded dataset: label = body region; red outline = lesion mask", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args()
    plot_samples(args.path, args.size)
    print(f"wrote {args.path}")


if __name__ == "__main__":
    main()
