"""The ``monai/`` folder of ``omnirad-export``: a MONAI bundle that MONAI's own runner applies to a
folder of images, no OmniRad-FL import needed:

    python -m monai.bundle run --config_file exported/monai/configs/inference.json \\
        --meta_file exported/monai/configs/metadata.json --bundle_root exported/monai \\
        --input_dir new-scans/ --output_dir predictions/

    monai/
        configs/metadata.json   MONAI's metadata: network data format, labels, preprocessing, metrics
        configs/inference.json  the workflow: timm builds the network (``_target_``), MONAI's transforms
                                read and normalise the images, MONAI's CSVSaver writes one row per image
        models/model.pt         the timm model's state dict (encoder, LoRA merged in, and head)
        docs/README.md          what it is and the command above

The preprocessing is omnirad-predict's, step for step, so the probabilities are the same (to 1e-5):
Pillow opens the image, takes grey modes to 8-bit grey (16-bit and float pixels scaled from their
own range) and others to RGB, and resizes it bilinearly to ``data.size``, as the sites read their
images (``omnirad.data.image_folder.read_image``); grey is repeated to 3 channels; pixels / 255,
bilinear resize without antialiasing to the encoder's input size, ``(x - mean) / std``.
The Pillow steps are the bundle's ``PILReader`` converter (a config expression): MONAI's own
``Resize`` is torch's resampling, not Pillow's, and the sites read with Pillow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import monai
import numpy as np
import PIL
import timm
import torch
from torch import nn

from omnirad.config import Config
from omnirad.data.image_folder import GREY_MODES, IMAGE_SUFFIXES, WIDE_MODES
from omnirad.data.sites import task_info
from omnirad.encoders import ENCODERS
from omnirad.models import encoder_for
from omnirad_fl.client.bundle import metrics_card

MODEL_FILE = "models/model.pt"

# Pillow's steps of omnirad.data.image_folder.read_image, as config expressions for the PILReader's
# converter: no MONAI transform resamples with Pillow, whose bilinear filter the sites' images went through.
TO_8BIT = ("$lambda image: Image.fromarray(((lambda v: (v - v.min()) / ((v.max() - v.min()) or 1.0))"
           "(numpy.asarray(image, dtype=numpy.float64)) * 255).round().astype(numpy.uint8)) "
           "if image.mode in @wide_modes else image.convert('L' if image.mode in @grey_modes else 'RGB')")
READ_AS_SITES = ("$lambda image: @to_8bit(image).resize((@image_size, @image_size), "
                 "Image.Resampling.BILINEAR).convert('RGB')")


def write_monai(cfg: Config, run: Path, adapter: str, model: nn.Module, model_args: dict[str, Any],
                probabilities: str, out: Path) -> None:
    """The bundle of the timm ``model`` (built from ``model_args``) in ``out``."""
    labels = output_labels(cfg, probabilities, model_args["num_classes"])
    (out / "models").mkdir(parents=True)
    (out / "configs").mkdir()
    (out / "docs").mkdir()
    torch.save(model.state_dict(), out / MODEL_FILE)
    write_json(out / "configs" / "inference.json", inference_config(cfg, model_args, probabilities))
    write_json(out / "configs" / "metadata.json", metadata(cfg, run, adapter, labels, probabilities))
    (out / "docs" / "README.md").write_text(readme(cfg, run, adapter, labels, probabilities))


def output_labels(cfg: Config, probabilities: str, num_outputs: int) -> list[str]:
    """A name per probability column: one output with a sigmoid is written as two (1 - p, p), as
    omnirad-predict writes it; columns without names are numbered."""
    columns = 2 if probabilities == "sigmoid" and num_outputs == 1 else num_outputs
    names = list(task_info(cfg.data).label_names)
    return names if len(names) == columns else [str(k) for k in range(columns)]


def postprocessing(probabilities: str, num_outputs: int) -> list[dict[str, Any]]:
    """Logits of one image (C,) to omnirad-predict's probabilities, with MONAI's ``Activations``."""
    if probabilities == "softmax":
        return [{"_target_": "Activations", "softmax": True}]
    steps: list[dict[str, Any]] = [{"_target_": "Activations", "sigmoid": True}]
    if num_outputs == 1:  # a one-output binary task: both classes' probabilities, as omnirad-predict writes them
        steps.append({"_target_": "Lambda", "func": "$lambda p: torch.cat([1 - p, p])"})
    return steps


def inference_config(cfg: Config, model_args: dict[str, Any], probabilities: str) -> dict[str, Any]:
    """configs/inference.json: MONAI's config syntax (``_target_``, ``@id``, ``$expression``)."""
    encoder = encoder_for(cfg)
    return {
        "imports": ["$import pathlib", "$import numpy", "$from PIL import Image", "$import timm"],
        "bundle_root": ".",
        "input_dir": "$@bundle_root + '/images'",
        "output_dir": "$@bundle_root + '/eval'",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "image_suffixes": list(IMAGE_SUFFIXES),
        "image_size": cfg.data.size,
        "input_size": encoder.input_size,
        "grey_modes": list(GREY_MODES),
        "wide_modes": list(WIDE_MODES),
        "to_8bit": TO_8BIT,
        "read_as_sites": READ_AS_SITES,
        "network_def": {"_target_": "timm.create_model", "model_name": ENCODERS[cfg.model.encoder].timm_name,
                        "pretrained": False, **model_args},
        "network": "$@network_def.to(@device)",
        "datalist": "$[{'image': str(p)} for p in sorted(pathlib.Path(@input_dir).rglob('*')) "
                    "if p.suffix.lower() in @image_suffixes]",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "reader": "PILReader", "converter": "@read_as_sites",
             "reverse_indexing": False, "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": 0, "a_max": 255, "b_min": 0, "b_max": 1},
            {"_target_": "Resized", "keys": "image", "spatial_size": ["@input_size", "@input_size"],
             "mode": "bilinear", "align_corners": False, "anti_aliasing": False},
            {"_target_": "NormalizeIntensityd", "keys": "image", "channel_wise": True,
             "subtrahend": encoder.mean.flatten().tolist(), "divisor": encoder.std.flatten().tolist()}]},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 16, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose",
                           "transforms": postprocessing(probabilities, model_args["num_classes"])},
        "saver": {"_target_": "CSVSaver", "output_dir": "@output_dir", "filename": "predictions.csv"},
        "predict": "$lambda batch: torch.stack([@postprocessing(logits) for logits in "
                   "monai.data.decollate_batch(@inferer(batch['image'].to(@device), @network))])",
        "save": "$lambda batch: @saver.save_batch(@predict(batch), "
                "{'filename_or_obj': batch['image'].meta['filename_or_obj']})",
        "initialize": ["$pathlib.Path(@input_dir).resolve(strict=True)",  # a missing input_dir: named, not an empty CSV
                       "$@network.load_state_dict(torch.load(@bundle_root + '/" + MODEL_FILE + "', "
                       "map_location=@device, weights_only=True), strict=True)", "$@network.eval()"],
        "run": ["$torch.no_grad()(lambda: [@save(batch) for batch in @dataloader])()"],
        "finalize": ["$@saver.finalize()"],
    }


def metadata(cfg: Config, run: Path, adapter: str, labels: list[str], probabilities: str) -> dict[str, Any]:
    """configs/metadata.json, in the fields of MONAI's metadata schema, with the preprocessing spelled out."""
    encoder = encoder_for(cfg)
    summary = json.loads((run / "summary.json").read_text())
    scored = metrics_card(run.name, summary, adapter, {}, {})["test-metrics"] or {}
    size = [encoder.input_size, encoder.input_size]
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                  "meta_schema_20220324.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by omnirad-export from run {run.name}, {adapter} adapter"},
        "monai_version": monai.__version__, "pytorch_version": torch.__version__, "numpy_version": np.__version__,
        "required_packages_version": {"timm": timm.__version__, "pillow": PIL.__version__},
        "name": run.name,
        "task": f"{task_info(cfg.data).kind} image classification ({cfg.data.task})",
        "description": f"A `{cfg.model.adapter}` adapter on the `{cfg.model.encoder}` encoder, trained by federated "
                       "learning with OmniRad-FL; see docs/README.md",
        "authors": "the OmniRad-FL federation of this run", "copyright": "the federation's members",
        "data_source": f"dataset {cfg.data.dataset} at its sites", "data_type": "png, jpeg, tiff, bmp",
        "image_classes": "one 2D image: grey (repeated to 3 channels) or RGB",
        "label_classes": ", ".join(labels),
        "pred_classes": f"{probabilities} probabilities, one per label: " + ", ".join(labels),
        "eval_metrics": {name: value for name, value in scored.items() if isinstance(value, float)},
        "intended_use": "research; not validated for clinical use",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "any", "num_channels": 3,
                                 "spatial_shape": size, "dtype": "float32", "value_range": [],
                                 "is_patch_data": False, "channel_def": {"0": "R", "1": "G", "2": "B"}}},
            "outputs": {"pred": {"type": "probabilities", "format": "classes", "num_channels": len(labels),
                                 "spatial_shape": [1], "dtype": "float32", "value_range": [0, 1],
                                 "is_onehot": False, "channel_def": dict(enumerate(labels))}}},
        "preprocessing": {
            "read": f"Pillow: grey modes {list(GREY_MODES)} to 8-bit grey ({list(WIDE_MODES)} scaled from the "
                    "image's own min-max), other modes to RGB; grey repeated to 3 channels",
            "size": {"read_size": [cfg.data.size, cfg.data.size], "read_resample": "Pillow bilinear",
                     "input_size": size, "input_resample": "bilinear, align_corners false, no antialiasing"},
            "intensity": {"scale": "pixels / 255", "mean": encoder.mean.flatten().tolist(),
                          "std": encoder.std.flatten().tolist(), "normalise": "(x - mean) / std per channel"},
            "probabilities": probabilities},
    }


def readme(cfg: Config, run: Path, adapter: str, labels: list[str], probabilities: str) -> str:
    """docs/README.md: what the bundle holds and the command that runs it."""
    return "\n".join([
        f"# {run.name}: MONAI bundle", "",
        f"The `{adapter}` adapter of OmniRad-FL run `{run.name}` on the `{cfg.model.encoder}` encoder "
        f"(timm `{ENCODERS[cfg.model.encoder].timm_name}`), as a timm model: `{MODEL_FILE}` is its state dict "
        "(LoRA updates merged in), `configs/inference.json` builds it with `timm.create_model`.", "",
        "```bash",
        "python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \\",
        "    --bundle_root . --input_dir <folder of images> --output_dir <folder>",
        "```", "",
        f"reads every PNG, JPEG, TIFF and BMP under `input_dir` (recursively) and writes `<output_dir>/predictions.csv`"
        f" (MONAI's `CSVSaver`): one row per image, its path then the {probabilities} probabilities of "
        f"{', '.join(labels)}, in that order; no header. They equal `omnirad-predict`'s to 1e-5.", "",
        "Preprocessing (configs/metadata.json's `preprocessing`) is omnirad-predict's: the PILReader's converter "
        "reads each image as the sites did (Pillow, bilinear to "
        f"{cfg.data.size} px), then MONAI's transforms scale to [0, 1], resize to the encoder's input, normalise.", "",
        "The configuration runs code (`_target_`, `$` expressions): run bundles you trust only.", ""])


def write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n")
