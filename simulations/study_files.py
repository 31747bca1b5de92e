"""Files for studies of real-data paths without real data: the embedded images written as a
hospital or a benchmark would hand them over.

    python -m omnirad_fl.simulations.study_files natural results/natural      # one file per imaging style
    python -m omnirad_fl.simulations.study_files medmnist results/medmnist    # a MedMNIST-format pool
    python -m omnirad_fl.simulations.study_files medmnist3d results/mm3d --size 28   # a MedMNIST 3D pool

- ``natural``: ``site-<style>.npz`` for CT, MR, X-ray and ultrasound (each site images in one style:
  a natural feature-skewed split, ``data.dataset=files``) and ``test.npz``, MedMNIST's layout.
- ``medmnist``: ``organamnist_<size>.npz`` with ``train``, ``val`` and ``test`` splits, read by
  the MedMNIST source (``data.dataset=organamnist``, ``data.root``) and split among sites like any
  pool. The labels are the embedded images' findings (normal, mass, nodules, diffuse), stored as
  classes 0-3 of OrganAMNIST's eleven: the file and its reading are MedMNIST's, the data and the
  class names printed are not.
- ``medmnist3d``: ``nodulemnist3d.npz`` (``_64`` at 64 voxels) in MedMNIST 3D's layout, read by
  ``data.dataset=nodulemnist3d``: noise volumes, class 1 with a bright cube that only some slices
  cut (so a volume's score beats its slices'); again the layout is MedMNIST's, the data are not.
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


def write_medmnist3d(folder: Path, size: int = 28, sizes: tuple[int, int, int] = (240, 30, 60), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, count in zip(("train", "val", "test"), sizes, strict=True):
        labels = rng.integers(0, 2, count)
        volumes = rng.normal(80, 20, (count, size, size, size))
        side = max(2, size // 5)
        for n in np.flatnonzero(labels):
            z, y, x = rng.integers(0, size - side, 3)
            volumes[n, z:z + side, y:y + side, x:x + side] = 220
        arrays[f"{name}_images"] = volumes.clip(0, 255).astype(np.uint8)
        arrays[f"{name}_labels"] = labels.reshape(-1, 1)
    path = medmnist_path(folder, "nodulemnist3d", size)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnirad_fl.simulations.study_files", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["natural", "medmnist", "medmnist3d"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    writers = {"natural": lambda: write_natural(args.folder, args.size),
               "medmnist": lambda: [write_medmnist(args.folder, args.size)],
               "medmnist3d": lambda: [write_medmnist3d(args.folder, args.size)]}
    paths = writers[args.kind]()
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
