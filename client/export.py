"""``omnirad-export RUN OUT``: a finished run's model in the layouts other tools load with their own call.

    omnirad-export runs/<run> exported/ [--adapter best|final] [--weights ENCODER_FILE]

    exported/
        README.md            the model card: data, federation, metrics and the test set they were
                             measured on, the encoder weights' SHA-256, how to load each layout
        config.json          timm / Hugging Face: architecture, model arguments, label_names,
        model.safetensors    num_classes, input size, mean and std; encoder and head in one
                             state dict (LoRA merged in): timm.create_model("local-dir:exported", pretrained=True)
        peft/                LoRA runs: the adapter in peft's layout (adapter_config.json,
                             adapter_model.safetensors), and base/ the timm model it adapts (the
                             frozen encoder and the trained head): PeftModel.from_pretrained(
                             timm.create_model("local-dir:exported/peft/base", pretrained=True), "exported/peft")
        monai/               a MONAI bundle (client/monai_bundle.py): configs/inference.json,
                             configs/metadata.json, models/model.pt, docs/README.md; MONAI's own
                             runner applies it to a folder of images: python -m monai.bundle run
                             --config_file exported/monai/configs/inference.json --meta_file
                             exported/monai/configs/metadata.json --bundle_root exported/monai
                             --input_dir IMAGES --output_dir OUT (OUT/predictions.csv)
        bundle/              the project's own bundle (client/bundle.py), which omnirad-predict
                             --run reads and checks against the site's encoder weights

A classification run's model is exported when its head is a linear layer on the encoder's pooled
features (``model.adapter`` ``linear``; ``lora`` and ``full`` with ``model.head=linear``; a
standardised-feature head is folded into the linear layer): that is a timm ViT's own classifier.
Other heads (mlp, cosine), segmentation, captioning, multi-task and FedPer runs have no timm
equivalent; for them the command says so and writes the project's bundle only. The MONAI bundle's
network is that timm model, so it is written exactly when the timm layout is: a segmentation
decoder or another head is OmniRad-FL's own module, which a bundle could build only by importing
omnirad_fl.

Preprocessing, as omnirad-predict applies it: pixels scaled to [0, 1], grey repeated to 3 channels,
resized bilinearly (no antialiasing) to ``pretrained_cfg.input_size``, normalised by its ``mean``
and ``std``; probabilities are the softmax of the logits (sigmoid for multi-label and one-output
binary tasks: ``omnirad.probabilities`` in config.json).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import save_for_hf
from torch import nn

from omnirad.adapters import POOLED
from omnirad.adapters.finetune import ImageClassifier
from omnirad.config import Config, ConfigError
from omnirad.data.sites import task_info
from omnirad.encoders import ENCODERS, FrozenEncoder
from omnirad.logs import show_progress
from omnirad.models import encoder_for, model_reads
from omnirad.run_files import ENCODER_FILE
from omnirad.standardise import StandardisedHead
from omnirad_fl.client.bundle import export_bundle, metrics_card
from omnirad_fl.client.monai_bundle import write_monai
from omnirad_fl.client.predict import adapted_model, check_encoder, run_config

log = logging.getLogger(__name__)


class NotExportable(ConfigError):
    """The run's model has no equivalent in a layout (the reason says why)."""


def run_model(run: Path, adapter: str, weights: str | None = None) -> tuple[Config, nn.Module]:
    """The run's model as omnirad-predict builds it (on the CPU): encoder checked against the run's."""
    cfg = run_config(run, weights, "cpu")
    check_encoder(run, cfg)
    return cfg, adapted_model(cfg, run, adapter).eval()


def linear_head(head: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of a linear classifier on pooled features; a standardised head's
    ``(x - mean) / std`` folded in. Raises ``NotExportable`` for other heads."""
    if isinstance(head, StandardisedHead):
        weight, bias = linear_head(head.head)
        return weight / head.std, bias - (weight / head.std) @ head.mean
    fc = getattr(head, "fc", None)
    if isinstance(fc, nn.Linear) and len(list(head.children())) == 1:
        return fc.weight.detach().clone(), fc.bias.detach().clone()
    raise NotExportable(f"the {type(head).__name__} head is not a linear layer, which a timm ViT's classifier is: "
                        "use model.head=linear (model.adapter=linear, or lora/full with model.head=linear)")


def classifier_parts(cfg: Config, model: nn.Module) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The timm ViT's encoder tensors (LoRA merged in) and the linear head of a classification run."""
    task = task_info(cfg.data)
    if task.segmentation or task.captioning:
        raise NotExportable(f"data.task={cfg.data.task}: only classification models have a timm layout")
    if isinstance(model, ImageClassifier):
        weight, bias = linear_head(model.head)
        return dict(model.merged_encoder().state_dict()), weight, bias
    if model_reads(cfg) == POOLED:  # the model is the head, on the frozen encoder's pooled features
        weight, bias = linear_head(model)
        return dict(encoder_for(cfg).vit.state_dict()), weight, bias
    raise NotExportable(f"model.adapter={cfg.model.adapter}: no timm layout for this adapter")


def timm_model(cfg: Config, encoder: FrozenEncoder, encoder_state: dict[str, torch.Tensor],
               weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    """The run's encoder architecture as timm builds it, with the classifier set to ``weight`` and ``bias``."""
    spec = ENCODERS[cfg.model.encoder]
    model = timm.create_model(spec.timm_name, pretrained=False, **model_args(encoder, spec.patch_size, len(bias)))
    model.load_state_dict({**encoder_state, "head.weight": weight, "head.bias": bias}, strict=True)
    return model.eval()


def model_args(encoder: FrozenEncoder, patch_size: int, num_classes: int) -> dict[str, Any]:
    return {"num_classes": num_classes, "img_size": encoder.input_size, "patch_size": patch_size,
            "dynamic_img_size": True}


def data_config(encoder: FrozenEncoder) -> dict[str, Any]:
    return {"input_size": (3, encoder.input_size, encoder.input_size), "interpolation": "bilinear", "crop_pct": 1.0,
            "crop_mode": "center", "mean": tuple(encoder.mean.flatten().tolist()),
            "std": tuple(encoder.std.flatten().tolist())}


def omnirad_fields(cfg: Config, run: Path, adapter: str) -> dict[str, Any]:
    """What config.json says besides timm's fields: how to turn logits into the run's probabilities."""
    task = task_info(cfg.data)
    sigmoid = task.multi_label or task.num_outputs == 1
    return {"run": run.name, "adapter": f"{adapter}_adapter.safetensors", "task": cfg.data.task,
            "probabilities": "sigmoid" if sigmoid else "softmax",
            "preprocessing": "pixels / 255 (uint8), grey repeated to 3 channels, bilinear resize (no antialias) to "
                             "input_size, then (x - mean) / std"}


def write_timm(cfg: Config, model: nn.Module, out: Path, run: Path, adapter: str) -> nn.Module:
    """config.json and model.safetensors in ``out``, written by timm's own ``save_for_hf``."""
    encoder = encoder_for(cfg)
    encoder_state, weight, bias = classifier_parts(cfg, model)
    exported = timm_model(cfg, encoder, encoder_state, weight, bias)
    labels = list(task_info(cfg.data).label_names)
    save_for_hf(exported, str(out), safe_serialization=True,
                model_config={"label_names": labels if len(labels) == len(bias) else None,
                              "omnirad": {**omnirad_fields(cfg, run, adapter), "label_names": labels}},
                model_args=model_args(encoder, ENCODERS[cfg.model.encoder].patch_size, len(bias)),
                data_config=data_config(encoder))
    return exported


def write_peft(cfg: Config, model: nn.Module, out: Path) -> None:
    """A LoRA run's adapter in peft's own layout (``save_pretrained``), and the timm model it adapts
    in ``out/base``: the frozen encoder with the run's trained head."""
    if not (isinstance(model, ImageClassifier) and model.uses_lora):
        raise NotExportable(f"model.adapter={cfg.model.adapter}: not a LoRA run, no peft adapter")
    encoder = encoder_for(cfg)
    weight, bias = linear_head(model.head)
    base = timm_model(cfg, encoder, dict(encoder.vit.state_dict()), weight, bias)
    save_for_hf(base, str(out / "base"), safe_serialization=True,
                model_config={"label_names": list(task_info(cfg.data).label_names)},
                model_args=model_args(encoder, ENCODERS[cfg.model.encoder].patch_size, len(bias)),
                data_config=data_config(encoder))
    model.backbone.save_pretrained(str(out))  # type: ignore[operator]  # peft's own writer


MONAI_LOAD = ("MONAI: `monai/`, a bundle that MONAI's runner applies to a folder of images, writing "
              "`<output folder>/predictions.csv`: `python -m monai.bundle run --config_file <this folder>/monai/configs/"
              "inference.json --meta_file <this folder>/monai/configs/metadata.json --bundle_root <this folder>/monai "
              "--input_dir <images> --output_dir <output folder>`")


def write_monai_of(cfg: Config, run: Path, adapter: str, exported: nn.Module, out: Path) -> None:
    """The MONAI bundle of the timm model ``write_timm`` exported, with the same arguments and probabilities."""
    num_classes = len(exported.state_dict()["head.bias"])
    args = model_args(encoder_for(cfg), ENCODERS[cfg.model.encoder].patch_size, num_classes)
    write_monai(cfg, run, adapter, exported, args, omnirad_fields(cfg, run, adapter)["probabilities"], out)


def card(cfg: Config, run: Path, adapter: str, written: dict[str, str]) -> str:
    """README.md: the model card, with Hugging Face's metadata header."""
    summary = json.loads((run / "summary.json").read_text())
    encoder = json.loads((run / ENCODER_FILE).read_text()) if (run / ENCODER_FILE).is_file() else {}
    task = task_info(cfg.data)
    info = metrics_card(run.name, summary, adapter, encoder, {})
    ship = summary.get("shipped") or {}
    d, s = cfg.data, cfg.strategy
    test_set = (f"the server's test file {Path(d.test_file).name}" if d.test_file else
                f"the {d.dataset} data's held-out test split ({d.num_test} images)" if d.dataset == "embedded" else
                f"the {d.dataset} data's test split")
    lines = ["---", "library_name: timm" if "timm" in written else "library_name: omnirad-fl",
             "tags: [image-classification, medical-imaging, federated-learning, omnirad-fl]",
             "---", "", f"# {run.name}", "",
             f"A {task.kind} model over {', '.join(task.label_names)}: a `{cfg.model.adapter}` adapter on the "
             f"`{cfg.model.encoder}` encoder, trained with OmniRad-FL by {summary.get('num-sites', d.num_sites)} "
             "sites that never shared their images.", "",
             "## Data", "",
             f"- dataset `{d.dataset}`, {d.size} px images; "
             + (f"one file per site ({d.site_files})" if d.site_files else
                f"a simulated `{d.partition}` split (alpha {d.alpha}) over {d.num_sites} sites")
             + f", each site holding out {d.val_fraction:.0%} for validation",
             "", "## Federation", "",
             f"- strategy `{s.name}`, personalization `{cfg.personalization.mode}`, {summary.get('rounds')} rounds of "
             f"{cfg.train.local_epochs} local epochs, head initialisation `{cfg.model.head_init}`, seed {cfg.run.seed}",
             f"- exported: `{adapter}_adapter.safetensors`, round {info['round']} ({info['selected-by']})"]
    if summary.get("epsilon-per-site"):
        lines.append(f"- differential privacy: epsilon per site {summary['epsilon-per-site']} "
                     f"(delta {cfg.privacy.delta})")
    lines += ["", "## Encoder", "",
              f"- `{cfg.model.encoder}` ({ENCODERS[cfg.model.encoder].timm_name}), weights "
              f"`{encoder.get('weights') or 'random init'}`, SHA-256 `{encoder.get('sha256', '')}`",
              "", "## Metrics", "",
              f"On {test_set} (never used to choose the round), and on the sites' validation splits:", "",
              "| metric | test | sites' validation |", "|---|---|---|"]
    test = info["test-metrics"] or {}
    val = ship.get("federated-val", {}) if adapter == "best" else summary.get("final-federated-val", {})
    for name in sorted(set(test) | set(val)):
        cells = [f"{m[name]:.4f}" if isinstance(m.get(name), float) else "-" for m in (test, val)]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines += ["", "## Files and how to load them", ""]
    lines += [f"- {what}" for what in written.values()]
    lines += ["", "Preprocessing: pixels / 255, grey repeated to 3 channels, bilinear resize (no antialiasing) to "
              "`pretrained_cfg.input_size`, then `(x - mean) / std` with config.json's mean and std; probabilities: "
              f"{omnirad_fields(cfg, run, adapter)['probabilities']} of the logits.", ""]
    return "\n".join(lines)


def export_run(run: Path, out: Path, adapter: str = "best", weights: str | None = None) -> dict[str, str]:
    """Write every layout the run's model has to ``out`` (a new folder); returns what was written
    or why a layout was not, by layout."""
    if out.exists():
        raise ConfigError(f"{out}: already exists; the export goes to a new folder")
    if not (run / "summary.json").is_file() or not (run / f"{adapter}_adapter.safetensors").is_file():
        raise ConfigError(f"{run}: no summary.json or {adapter}_adapter.safetensors; export a finished run")
    written: dict[str, str] = {}
    skipped: dict[str, str] = {}
    cfg = run_config(run, weights, "cpu")  # refuses multi-task, captioning, FedPer and spectral runs by name
    cfg, model = run_model(run, adapter, weights)
    out.mkdir(parents=True)
    try:
        exported = write_timm(cfg, model, out, run, adapter)
        written["timm"] = ('timm / Hugging Face: `config.json` + `model.safetensors`: '
                           '`model = timm.create_model("local-dir:<this folder>", pretrained=True)`')
        write_monai_of(cfg, run, adapter, exported, out / "monai")
        written["monai"] = MONAI_LOAD
    except NotExportable as err:
        skipped["timm"] = str(err)
        skipped["monai"] = f"the MONAI bundle's network is the timm model, which this run has not ({err})"
    try:
        write_peft(cfg, model, out / "peft")
        written["peft"] = ('peft: `peft/` (LoRA adapter) on `peft/base/` (the frozen encoder and the head): '
                           '`PeftModel.from_pretrained(timm.create_model("local-dir:<this folder>/peft/base", pretrained=True), '
                           '"<this folder>/peft")`')
    except NotExportable as err:
        skipped["peft"] = str(err)
    export_bundle(run, out / "bundle", adapter)
    written["bundle"] = ("OmniRad-FL: `bundle/`, which `omnirad-predict --run <this folder>/bundle` reads "
                         "(and checks the encoder weights' SHA-256)")
    (out / "README.md").write_text(card(cfg, run, adapter, written)
                                   + "".join(f"\nNot exported as {k}: {v}.\n" for k, v in skipped.items()))
    return {**written, **{k: f"not written: {v}" for k, v in skipped.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    show_progress()
    parser = argparse.ArgumentParser(prog="omnirad-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished run folder")
    parser.add_argument("out", type=Path, help="the folder to write (must not exist)")
    parser.add_argument("--adapter", choices=("best", "final"), default="best",
                        help="the adapter of the best round by federated validation (default) or of the last round")
    parser.add_argument("--weights", help="this machine's copy of the encoder weights (default: the run's model.weights)")
    args = parser.parse_args(argv)
    try:
        result = export_run(args.run, args.out, args.adapter, args.weights)
    except ConfigError as err:
        log.error("omnirad-export: %s", err)
        return 2
    for layout, what in result.items():
        log.info("%s: %s", layout, what)
    log.info("omnirad-export: wrote %s (model card: %s)", args.out, args.out / "README.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
