"""Benchmark: slices per second a site reads from volumes (NIfTI and DICOM series through MONAI:
read, orient, window, slice, resize) and then encodes into its feature cache, or loads from it.

The volumes are synthetic CT (soft tissue around 40 HU; class 1 holds a dense 300 HU nodule that
only some slices cut), written by nibabel and pydicom into a temporary folder, so nothing is
downloaded. ``--write-sites DIR`` instead writes two sites' volume CSVs, a server test CSV and a
held-out CSV there, for an end-to-end federation (docs/volumes.md).

    python simulations/studies/bench_volumes.py [--volumes 8] [--shape 128 128 32] [--size 64]
    python simulations/studies/bench_volumes.py --write-sites demo-volumes
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from omnirad.configure import load_config
from omnirad.data.labelled import ReadOptions
from omnirad.data.site_files import format_of
from omnirad.data.sources.files import file_task
from omnirad.models import encoder_for, model_inputs
from omnirad_fl.simulations.dicom_files import write_dicom_series


def synthetic_ct(label: int, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Hounsfield units: soft tissue with noise, and for class 1 a 300 HU sphere somewhere inside."""
    hu = rng.normal(40, 25, shape)
    if label:
        radius = min(shape) / 4
        centre = [rng.uniform(radius, side - radius) for side in shape]
        grid = np.meshgrid(*(np.arange(side) for side in shape), indexing="ij")
        hu[sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) < radius**2] = 300
    return hu


def write_site(folder: Path, kind: str, num_volumes: int, shape: tuple[int, int, int], seed: int) -> Path:
    """A volume CSV (path,label,patient) of ``num_volumes`` synthetic CT volumes, alternating classes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["path,label,patient"]
    for n in range(num_volumes):
        hu, patient = synthetic_ct(n % 2, shape, rng), f"{folder.name}-{n}"
        name = f"ct{n}" if kind == "dicom" else f"ct{n}.nii.gz"
        if kind == "dicom":
            write_dicom_series(folder / name, hu, patient)
        else:
            nib.save(nib.Nifti1Image(hu.astype(np.float32), np.eye(4)), folder / name)
        rows.append(f"{name},{n % 2},{patient}")
    (folder / "volumes.csv").write_text("\n".join(rows) + "\n")
    return folder / "volumes.csv"


def bench(kind: str, args: argparse.Namespace, root: Path) -> dict[str, float]:
    path = write_site(root / kind, kind, args.volumes, tuple(args.shape), seed=0)
    options = ReadOptions(args.size, window="abdomen", slice_axis=2)
    start = time.perf_counter()
    splits = format_of(path).read(path, file_task("binary-class", 2), options)
    read_s = time.perf_counter() - start
    images = np.concatenate([s.images for s in splits.values()])
    cfg = load_config({"model.encoder": args.encoder, "data.size": args.size, "model.feature-cache": True,
                       "model.cache-dir": str(root / f"cache-{kind}")})
    encoder = encoder_for(cfg)
    timings = []
    for _ in range(2):  # first: encode and store; second: load
        start = time.perf_counter()
        model_inputs(cfg, encoder, images, f"{kind} slices")
        timings.append(time.perf_counter() - start)
    n = len(images)
    return {"format": kind, "slices": n, "read-slices-per-s": n / read_s, "encode-and-cache-slices-per-s": n / timings[0],
            "from-cache-slices-per-s": n / timings[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 128, 32], help="voxels per volume (x y z)")
    parser.add_argument("--size", type=int, default=64, help="slice side the encoder sees")
    parser.add_argument("--encoder", default="vit-tiny")
    parser.add_argument("--write-sites", type=Path, help="write two NIfTI sites, a test and a held-out CSV there, and exit")
    args = parser.parse_args()
    if args.write_sites:
        shape = tuple(args.shape)
        for seed, name in enumerate(("site-a", "site-b", "test", "held-out")):
            print(write_site(args.write_sites / name, "nifti", 12 if name.startswith("site") else 8, shape, seed))
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench(kind, args, Path(tmp)) for kind in ("nifti", "dicom")]
    print(f"{args.volumes} volumes of {args.shape[0]}x{args.shape[1]}x{args.shape[2]} voxels, slices at {args.size} px, "
          f"{args.encoder}")
    print("| format | slices | read (slices/s) | encode + cache (slices/s) | from cache (slices/s) |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['format']} | {r['slices']} | {r['read-slices-per-s']:.0f} | {r['encode-and-cache-slices-per-s']:.0f} "
              f"| {r['from-cache-slices-per-s']:.0f} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
