"""``omnirad-predict``: a finished run's model applied to a site's own images, one CSV row per image.

    omnirad-predict --run omnirad-server/runs/<run> --input new-scans/ --out predictions.csv \\
        --weights weights/omnirad-small.safetensors

The run folder gives the configuration and the adapter (``best_adapter.safetensors``, selected
by federated validation, or ``--adapter final``); the encoder weights are the site's own copy
(``--weights``; the server's path in the run configuration by default). Input: a folder of images
(PNG, JPEG, TIFF, BMP; searched recursively), a CSV with a ``path`` column (and ``label``, when
known) naming images or volumes (NIfTI files, DICOM series folders), a NIfTI file, or a
MedMNIST-format ``.npz`` (every split's images, and labels when present; MedMNIST 3D volumes
too). Volumes are read, windowed and sliced as the run read its sites' volumes (its
``data.window``, ``data.slice-axis``); each slice gets a row, and each volume a row in
``<out>-volumes.csv`` with the mean or max (``data.volume-score``) of its slices' probabilities.
Every unreadable file is named before any image is encoded. A segmentation run's masks go to
``<out>-masks/``, listed in ``<out>`` with voxels (pixels) per class: one NIfTI file per volume on
the volume's own grid (RAS), one PNG per 2D image at the run's image size (``data.size``), its
pixel values the class indices. Multi-task runs' per-task adapters are not applied by this command.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file

from omnirad.adapters import load_trainable_state, trainable_state
from omnirad.config import Config, ConfigError
from omnirad.configure import load_config
from omnirad.data.image_folder import IMAGE_SUFFIXES, as_colour, read_image, summary
from omnirad.data.labelled import ReadOptions
from omnirad.data.npz import SPLITS, DataFileError, is_volume_array, read_npz_arrays
from omnirad.data.sites import task_info
from omnirad.data.sources.files import read_options
from omnirad.data.tables import csv_table
from omnirad.data.volumes import VolumeRow, file_problems, is_volume, read_volume, slice_volume_array, uncut
from omnirad.devices import placement_for
from omnirad.encoders import weights_fingerprint
from omnirad.images import resized_images
from omnirad.logs import show_progress
from omnirad.methods import site_method
from omnirad.metrics import pool_volumes
from omnirad.models import encoder_for, kept_at_sites, model_inputs, new_model
from omnirad.problems import Problems
from omnirad.run_files import ENCODER_FILE, read_broadcast
from omnirad.tensor_checks import state_problems
from omnirad.training import predict
from omnirad_fl.client.bundle import export_bundle

log = logging.getLogger(__name__)


@dataclass
class Images:
    """What to predict on: a name per image, the pixels, and labels where the input has them (-1: none);
    for slices of volumes, each slice's volume (an index into ``volume_names``)."""

    names: list[str]
    pixels: np.ndarray
    labels: np.ndarray
    volumes: np.ndarray | None = None
    volume_names: tuple[str, ...] = ()
    grids: tuple[tuple[np.ndarray, tuple[int, int, int]], ...] = ()  # NIfTI/DICOM: each volume's affine and shape


def read_input(path: Path, options: ReadOptions) -> Images:
    """The images of a folder, a CSV, a NIfTI file or an ``.npz``; ``DataFileError`` naming every
    unreadable file."""
    if path.suffix.lower() == ".npz":
        return read_npz_images(path, options)
    if path.is_file() and is_volume(path):
        return read_volumes(path, [(path.name, path, -1)], options)
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        entries = [(f.relative_to(path).as_posix(), f, -1) for f in files]
    elif path.suffix.lower() == ".csv":
        entries = csv_entries(path)
    else:
        raise DataFileError(f"{path}: expected a folder of images, a CSV with a path column, a NIfTI file or an .npz file")
    if not entries:
        raise DataFileError(f"{path}: no images found ({', '.join(IMAGE_SUFFIXES)})")
    if any(is_volume(file) for _, file, _ in entries):
        return read_volumes(path, entries, options)
    images, problems = [], Problems()
    for name, file, _ in entries:
        try:
            images.append(read_image(file, options.size))
        except Exception as err:  # noqa: BLE001 - Pillow's decoders raise many kinds; each image is named
            problems.add(f"{name}: could not be read as an image ({type(err).__name__})")
    problems.raise_if_any(DataFileError, lambda found: summary(path, found))
    colour = any(image.ndim == 3 for image in images)
    pixels = np.stack([as_colour(image) if colour else image for image in images])
    return Images([name for name, _, _ in entries], pixels, np.array([label for _, _, label in entries], dtype=np.int64))


def csv_entries(path: Path) -> list[tuple[str, Path, int]]:
    """The images a CSV lists (``path``, optional ``label``), read as site CSVs are (``csv_table``:
    not UTF-8, NUL bytes or a broken quote are named with the file and line)."""
    columns, records = csv_table(path)
    if "path" not in columns:
        raise DataFileError(f"{path}: no 'path' column")
    entries = []
    for row in records:
        name, label = row[columns["path"]], row.get(columns.get("label", ""), "").strip()
        entries.append((name, path.parent / name, int(label) if label.isdigit() else -1))
    return entries


def read_volumes(path: Path, entries: list[tuple[str, Path, int]], options: ReadOptions) -> Images:
    """Every slice of the volumes named (NIfTI files, DICOM series folders), as the run's sites read
    them; every bad entry is named: a missing file does not hide another that cannot be read."""
    rows = [VolumeRow(file, label, "", name, path.name, None) for name, file, label in entries]
    problems, read = Problems(), []
    for row in rows:
        if found := file_problems(row, segmentation=False):
            problems.extend(found)
            continue
        try:
            read.append(read_volume(row, options, 0, segmentation=False))
        except Exception as err:  # noqa: BLE001 - MONAI's readers raise many kinds; each is reported by name
            problems.add(f"{row.where}: {row.file.name} could not be read as a volume ({type(err).__name__})")
    problems.raise_if_any(DataFileError, lambda found: summary(path, found))
    slices = [volume.slices for volume in read]
    names = [f"{name}#{k}" for (name, _, _), volume in zip(entries, slices, strict=True) for k in range(len(volume))]
    return Images(names, np.concatenate(slices),
                  np.concatenate([np.full(len(v), label, np.int64) for (_, _, label), v in zip(entries, slices, strict=True)]),
                  np.concatenate([np.full(len(v), i, np.int64) for i, v in enumerate(slices)]),
                  tuple(name for name, _, _ in entries), tuple((volume.affine, volume.shape) for volume in read))


def read_npz_images(path: Path, options: ReadOptions) -> Images:
    """Every split's images of a MedMNIST-format file, resized to ``size``, with its labels; 3D
    volumes (MedMNIST 3D) as slices, each sample a volume."""
    arrays = read_npz_arrays(path)  # a damaged array or a crafted size claim: DataFileError naming the key
    names: list[str] = []
    pixels, labels, volumes, volume_names = [], [], [], []
    for split in SPLITS:
        if f"{split}_images" not in arrays:
            continue
        images = arrays[f"{split}_images"]
        found = arrays.get(f"{split}_labels")
        single = found is not None and found.ndim <= 2 and found.size == len(images)  # one class index per image
        known = found.reshape(-1).astype(np.int64) if single else np.full(len(images), -1, np.int64)  # type: ignore[union-attr]
        if is_volume_array(images):
            sliced = slice_volume_array(images, known, options)
            volumes.append(sliced.volumes + len(volume_names))  # type: ignore[operator]
            names += [f"{split}/{v}#{k}" for v in range(len(images)) for k in range(len(sliced) // len(images))]
            volume_names += [f"{split}/{v}" for v in range(len(images))]
            pixels.append(sliced.images)
            labels.append(sliced.labels)
            continue
        names += [f"{split}/{i}" for i in range(len(images))]
        pixels.append(resized_images(images, options.size))
        labels.append(known)
    if not names:
        raise DataFileError(f"{path}: no {{split}}_images arrays (train_images, val_images or test_images)")
    if volumes and len(volumes) != len(pixels):
        raise DataFileError(f"{path}: some splits hold volumes (N, D, H, W) and others 2D images: mixed 2D/3D")
    return Images(names, np.concatenate(pixels), np.concatenate(labels),
                  np.concatenate(volumes) if volumes else None, tuple(volume_names))


def run_config(run: Path, weights: str | None, device: str) -> Config:
    """The run's configuration as this machine runs it: its own encoder weights and device, no cache."""
    path = run / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run}: not a run folder (no config.yaml)")
    flat = OmegaConf.to_container(OmegaConf.load(path))
    cfg = load_config({**flat, "model.feature-cache": False, "run.device": device,  # type: ignore[dict-item]
                       **({"model.weights": weights} if weights is not None else {})})
    if cfg.multitask.site_tasks:
        raise ConfigError(f"{run}: a multi-task run; omnirad-predict applies single-task runs only")
    if task_info(cfg.data).captioning:
        raise ConfigError(f"{run}: a captioning run; omnirad-predict writes class probabilities or masks only")
    if cfg.personalization.mode == "fedper" or site_method(cfg.strategy) is not None:
        raise ConfigError(f"{run}: no single global model (FedPer keeps heads at the sites; spectral prompts need "
                          "the bank)")
    return cfg


def check_encoder(run: Path, cfg: Config) -> None:
    """The encoder weights this machine will use must be the ones the run trained its adapters on
    (``encoder.json``, written at the run's start; older run folders have none and are not checked)."""
    recorded = run / ENCODER_FILE
    if not recorded.is_file():
        return
    expected = json.loads(recorded.read_text()).get("sha256", "")
    try:
        actual = weights_fingerprint(cfg.model.weights)
    except OSError as err:
        raise ConfigError(f"model.weights={cfg.model.weights}: cannot be read ({type(err).__name__}); give this "
                          "machine's copy with --weights") from err
    if expected and actual != expected:
        raise ConfigError(f"model.weights={cfg.model.weights or '(random init)'}: sha256 {actual[:16]}... is not the "
                          f"encoder the run trained on ({recorded}: sha256 {expected[:16]}...)")


def probabilities(cfg: Config, outputs: torch.Tensor) -> np.ndarray:
    """Class probabilities: softmax over classes, sigmoid per label (multi-label, one-output binary)."""
    if task_info(cfg.data).multi_label or outputs.shape[1] == 1:
        probs = torch.sigmoid(outputs)
        return torch.cat([1 - probs, probs], dim=1).numpy() if outputs.shape[1] == 1 else probs.numpy()
    return torch.softmax(outputs, dim=1).numpy()


def read_adapter(path: Path, model: torch.nn.Module, kept: frozenset[str]) -> dict[str, torch.Tensor]:
    """The adapter file's tensors, once they fit ``model`` (names, shapes, dtypes; all finite): a
    damaged or replaced adapter would otherwise write NaN probabilities or a wrong class everywhere."""
    try:
        state = load_file(path)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type, and OSError, for damaged files
        raise DataFileError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from err
    expected = {k: v for k, v in trainable_state(model).items() if k not in kept or k in state}
    problems = Problems()
    problems.extend(state_problems(state, expected))
    problems.raise_if_any(DataFileError, lambda found: f"{path}: not an adapter of this run's model: {'; '.join(found)}")
    return state


def adapted_model(cfg: Config, run: Path, adapter: str) -> torch.nn.Module:
    """The run's model: its encoder, what the server broadcast, and the chosen adapter, checked."""
    model = new_model(cfg, read_broadcast(run))
    kept = kept_at_sites(cfg, model)
    load_trainable_state(model, read_adapter(run / f"{adapter}_adapter.safetensors", model, kept), optional=kept)
    return model


def predict_images(cfg: Config, run: Path, adapter: str, images: Images) -> np.ndarray:
    """The run's model (its encoder, the chosen adapter) on ``images``: class probabilities."""
    model = adapted_model(cfg, run, adapter)
    inputs = model_inputs(cfg, encoder_for(cfg), images.pixels, "images to predict", use_cache=False)
    return probabilities(cfg, predict(model, inputs, placement=placement_for(cfg.run)))


def write_predictions(out: Path, cfg: Config, images: Images, probs: np.ndarray) -> None:
    """One row per image (slice) in ``out``; for volumes also one row per volume in ``<out>-volumes.csv``."""
    write_rows(out, cfg, "image", images.names, images.labels, probs)
    if images.volumes is not None:
        ids, pooled = pool_volumes(probs, images.volumes, cfg.data.volume_score, task_info(cfg.data).multi_label)
        labels = np.array([images.labels[images.volumes == v][0] for v in ids])
        write_rows(volume_csv(out), cfg, "volume", [images.volume_names[v] for v in ids], labels, pooled)


def write_masks(out: Path, cfg: Config, images: Images, probs: np.ndarray) -> Path:
    """Each predicted mask in ``<out>-masks/``: NIfTI on each volume's own grid and affine (RAS), or
    PNG per 2D image; ``out`` lists them with voxels (pixels) per class. Returns the mask folder."""
    folder = out.with_name(f"{out.stem}-masks")
    folder.mkdir(parents=True, exist_ok=True)
    classes = task_info(cfg.data).label_names
    saved = volume_masks(cfg, images, probs, folder) if images.grids else image_masks(images, probs, folder)
    what, unit = ("volume", "voxels") if images.grids else ("image", "pixels")
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([what, "mask", *(f"{unit}-{name}" for name in classes)])
        for name, file, mask in saved:
            writer.writerow([name, file.relative_to(out.parent).as_posix(), *np.bincount(mask.ravel(), minlength=len(classes))])
    return folder


def volume_masks(cfg: Config, images: Images, probs: np.ndarray, folder: Path) -> Iterator[tuple[str, Path, np.ndarray]]:
    """Each volume's mask, its slices put back on the volume's grid, saved as NIfTI with its affine."""
    for v, (name, (affine, shape)) in enumerate(zip(images.volume_names, images.grids, strict=True)):
        mask = uncut(probs[images.volumes == v].argmax(axis=1).astype(np.uint8), cfg.data.slice_axis, shape)
        file = folder / f"mask-{v:04d}.nii.gz"
        nib.save(nib.Nifti1Image(mask, affine), file)
        yield name, file, mask


def image_masks(images: Images, probs: np.ndarray, folder: Path) -> Iterator[tuple[str, Path, np.ndarray]]:
    """Each 2D image's mask as a PNG of class indices (numbered, as image names may hold folders)."""
    for i, (name, scores) in enumerate(zip(images.names, probs, strict=True)):
        mask = scores.argmax(axis=0).astype(np.uint8)
        file = folder / f"mask-{i:05d}.png"
        Image.fromarray(mask).save(file)
        yield name, file, mask


def volume_csv(out: Path) -> Path:
    return out.with_name(f"{out.stem}-volumes{out.suffix or '.csv'}")


def write_rows(out: Path, cfg: Config, what: str, names: Sequence[str], labels: np.ndarray, probs: np.ndarray) -> None:
    classes = task_info(cfg.data).label_names
    multi_label = task_info(cfg.data).multi_label
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        columns = classes if len(classes) == probs.shape[1] else tuple(str(k) for k in range(probs.shape[1]))
        writer.writerow([what, "label", "predicted", *(f"p-{name}" for name in columns)])
        for name, label, row in zip(names, labels, probs, strict=True):
            predicted = ";".join(str(k) for k in np.flatnonzero(row > 0.5)) if multi_label else str(int(row.argmax()))
            writer.writerow([name, "" if label < 0 else int(label), predicted, *(f"{p:.6f}" for p in row)])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="omnirad-predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a finished run folder (config.yaml and adapters)")
    parser.add_argument("--input", type=Path,
                        help="a folder of images, a CSV with a path column (images or volumes), a NIfTI file, or an .npz")
    parser.add_argument("--export", type=Path, metavar="BUNDLE",
                        help="instead of predicting: write the run's model bundle (configuration, the chosen adapter, "
                             "encoder fingerprint, metrics card) to this new folder; --run BUNDLE reads it")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"), help="the CSV to write (default: predictions.csv)")
    parser.add_argument("--adapter", choices=("best", "final"), default="best",
                        help="the adapter of the best round by federated validation (default) or of the last round")
    parser.add_argument("--weights", help="this machine's copy of the encoder weights (default: the run's model.weights)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    show_progress()
    args = parse_args(argv)
    try:
        if (args.input is None) == (args.export is None):
            raise ConfigError("give --input (to predict) or --export (to write a model bundle), one of the two")
        cfg = run_config(args.run, args.weights, args.device)
        if not (args.run / f"{args.adapter}_adapter.safetensors").is_file():
            raise ConfigError(f"{args.run}: no {args.adapter}_adapter.safetensors (has the run finished?)")
        if args.export is not None:
            log.info("omnirad-predict: wrote the model bundle %s", export_bundle(args.run, args.export, args.adapter))
            return 0
        check_encoder(args.run, cfg)
        images = read_input(args.input, read_options(cfg.data))
        if task_info(cfg.data).segmentation and images.volumes is not None and not images.grids:
            raise ConfigError(f"{args.input}: MedMNIST 3D volumes have no grid to put a mask on; give NIfTI or "
                              "DICOM volumes, or 2D images")
        log.info("omnirad-predict: %d images from %s, %s adapter of %s", len(images.names), args.input, args.adapter,
                 args.run.name)
        probs = predict_images(cfg, args.run, args.adapter, images)
    except (ConfigError, DataFileError) as err:  # bad input: its file and what is wrong, exit 2, never a traceback
        log.error("omnirad-predict: %s", err)
        return 2
    if task_info(cfg.data).segmentation:
        log.info("wrote %s and the masks in %s", args.out, write_masks(args.out, cfg, images, probs))
        return 0
    write_predictions(args.out, cfg, images, probs)
    known = images.labels >= 0
    if known.any() and not task_info(cfg.data).multi_label:
        accuracy = float((probs[known].argmax(axis=1) == images.labels[known]).mean())
        log.info("accuracy on the %d labelled images: %.3f", int(known.sum()), accuracy)
    log.info("wrote %s%s", args.out, f" and {volume_csv(args.out)}" if images.volumes is not None else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
