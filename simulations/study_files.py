"""Files for studies of real-data paths without real data: the embedded images written as a
hospital or a benchmark would hand them over.

    python -m omnirad_fl.simulations.study_files natural results/natural      # one file per imaging style
    python -m omnirad_fl.simulations.study_files medmnist results/medmnist    # a MedMNIST-format pool

- ``natural``: ``site-<style>.npz`` for CT, MR, X-ray and ultrasound (each site images in one style:
  a natural feature-skewed split, ``data.dataset=files``) and ``test.npz``, MedMNIST's layout.
- ``medmnist``: ``organamnist_<size>.npz`` with ``train``, ``val`` and ``test`` splits, read by
  the MedMNIST source (``data.dataset=organamnist``, ``data.root``) and split among sites like any
  pool. The labels are the embedded images' findings (normal, mass, nodules, diffuse), stored as
  classes 0-3 of OrganAMNIST's eleven: the file and its reading are MedMNIST's, the data and the
  class names printed are not.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from omnirad.data import synthetic
from omnirad.data.npz import medmnist_path


def write_natural(folder: Path, size: int = 64, per_style: int = 600, test: int = 800) -> list[Path]:
    train = synthetic.generate(per_style * len(synthetic.MODALITIES), size=size, seed=0)
    held_out = synthetic.generate(test, size=size, seed=1)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for style, name in enumerate(synthetic.MODALITIES):
        keep = train.modalities == style
        path = folder / f"site-{name}.npz"
        np.savez_compressed(path, train_images=train.images[keep], train_labels=train.labels[keep].reshape(-1, 1))
        written.append(path)
    path = folder / "test.npz"
    np.savez_compressed(path, train_images=held_out.images, train_labels=held_out.labels.reshape(-1, 1))
    return [*written, path]


def write_medmnist(folder: Path, size: int = 64, sizes: tuple[int, int, int] = (2400, 400, 800)) -> Path:
    splits = {"train": synthetic.generate(sizes[0], size=size, seed=0),
              "val": synthetic.generate(sizes[1], size=size, seed=2),
              "test": synthetic.generate(sizes[2], size=size, seed=1)}
    arrays = {}
    for name, split in splits.items():
        arrays[f"{name}_images"], arrays[f"{name}_labels"] = split.images, split.findings.reshape(-1, 1)
    path = medmnist_path(folder, "organamnist", size)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnirad_fl.simulations.study_files", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["natural", "medmnist"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    paths = write_natural(args.folder, args.size) if args.kind == "natural" else [write_medmnist(args.folder, args.size)]
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
