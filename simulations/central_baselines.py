"""Centralised reference numbers on the embedded dataset: what the federated runs are measured against.

Models trained on the pooled training images (no federation) and scored on the test set: a linear
probe and an MLP head on the frozen encoder's features, a small CNN trained end to end, and two
sanity references that say how hard the task is (logistic regression on the mean intensity alone,
and on 8x8-pixel thumbnails). For ``data.task=segmentation``: the segmentation decoder, with the
same initialisation and recipe as in a federated run. Usage:

    python -m omnirad_fl.simulations.central_baselines [--models linear mlp cnn intensity thumbnail]
        [--seeds 0 1 2] [--epochs 30] [key=value ...]
    python -m omnirad_fl.simulations.central_baselines data.task=segmentation model.adapter=decoder --epochs 20 --seeds 0

Config keys (``data.size=64 model.encoder='vit-tiny'``) select data and encoder as in a run;
``model.standardise-features=true`` standardises the heads' features with the pooled training
images' statistics, as a federated run does with every site's.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from omnirad.adapters import create_head
from omnirad.config import Config, DataConfig
from omnirad.configure import load_config
from omnirad.data.sites import pooled_train, server_test_set, task_info
from omnirad.devices import placement_for
from omnirad.images import images_to_tensor
from omnirad.metrics import classification_metrics, wire_keys
from omnirad.models import encoder_for, model_inputs, new_model
from omnirad.standardise import FeatureMoments, Standardisation, StandardisedHead
from omnirad.training import encode, evaluate_model, train_model


class SmallCNN(nn.Module):
    """Four conv blocks with GroupNorm: a from-scratch reference with no pretrained features."""

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()
        layers, channels = [], 1
        for out in (width, width * 2, width * 4, width * 4):
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.GroupNorm(8, out), nn.ReLU(), nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def train_cnn(data: DataConfig, epochs: int, seed: int) -> dict[str, float]:
    """End-to-end CNN on the pooled images; the same optimiser as the heads."""
    torch.manual_seed(seed)
    train, test = pooled_train(data), server_test_set(data)
    task = task_info(data)
    model = SmallCNN(task.num_outputs)
    x_train, y_train = images_to_tensor(train.images), task.targets(train.labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(y_train), generator=generator).split(64):
            optimizer.zero_grad()
            task.loss(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x) for x in images_to_tensor(test.images).split(256)])
    return classification_metrics(test.labels, logits, task)


def logistic_baseline(data: DataConfig, features: Callable[[np.ndarray], np.ndarray]) -> dict[str, float]:
    """Logistic regression on hand-made image features (deterministic: seeds do not matter)."""
    train, test = pooled_train(data), server_test_set(data)
    clf = LogisticRegression(max_iter=3000).fit(features(train.images), train.labels)
    return classification_metrics(test.labels, np.log(clf.predict_proba(features(test.images)) + 1e-12), task_info(data))


def mean_intensity(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).mean(axis=1, keepdims=True) / 255.0


def thumbnail(images: np.ndarray) -> np.ndarray:
    """8x8 block means: coarse layout, no texture."""
    n, h, w = images.shape[:3]
    return images[:, : h - h % 8, : w - w % 8].reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4)).reshape(n, -1) / 255.0


def head_baseline(cfg: Config, adapter: str, features: tuple, *, epochs: int, seed: int) -> dict[str, float]:
    train_x, train_y, test_x, test_y = features
    torch.manual_seed(seed)
    task = task_info(cfg.data)
    head = create_head(adapter, train_x.shape[1], task.num_outputs, cfg.model)
    if cfg.model.standardise_features:  # as in a federated run, with the pooled images' statistics
        head = StandardisedHead(head, train_x.shape[1])
        head.set_standardisation(Standardisation.from_moments(FeatureMoments.of(train_x)))
    placement = placement_for(cfg.run)
    train_model(head, train_x, train_y, task, train=cfg.train, epochs=epochs, seed=seed, placement=placement)
    metrics = evaluate_model(head, test_x, test_y, task, placement=placement)
    metrics.pop("loss")
    return metrics


def decoder_baseline(cfg: Config, epochs: int, seed: int) -> dict[str, float]:
    """The federated runs' decoder (same initial weights and optimiser), trained on the pooled data."""
    train, test = pooled_train(cfg.data), server_test_set(cfg.data)
    encoder, task = encoder_for(cfg), task_info(cfg.data)
    model = new_model(cfg)
    train_inputs = model_inputs(cfg, encoder, train.images, "pooled train")
    placement = placement_for(cfg.run)
    train_model(model, train_inputs, train.labels, task, train=cfg.train, epochs=epochs, seed=seed, placement=placement)
    return evaluate_model(model, model_inputs(cfg, encoder, test.images, "test"), test.labels, task, placement=placement)


MODELS = {
    "linear": "linear probe (frozen encoder)",
    "mlp": "MLP head (frozen encoder)",
    "cnn": "small CNN (end to end)",
    "intensity": "logistic regression, mean intensity",
    "thumbnail": "logistic regression, 8x8 thumbnail",
    "decoder": "segmentation decoder (frozen encoder)",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS),
                        help="default: every classification model, or the decoder for data.task=segmentation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30, help="epochs for the heads and the CNN")
    parser.add_argument("overrides", nargs="*", help="configuration keys, key=value")
    args = parser.parse_args(argv)
    cfg = load_config(dict(_parse(o) for o in args.overrides))
    if args.models is None:
        args.models = ["decoder"] if task_info(cfg.data).segmentation else [m for m in MODELS if m != "decoder"]
    train, test = pooled_train(cfg.data), server_test_set(cfg.data)
    features = None
    if {"linear", "mlp"} & set(args.models):
        encoder = encoder_for(cfg)
        placement = placement_for(cfg.run)
        features = (encode(encoder, train.images, desc="pooled train", placement=placement), train.labels,
                    encode(encoder, test.images, desc="test", placement=placement), test.labels)
    runners: dict[str, Callable[[int], dict[str, float]]] = {
        "linear": lambda seed: head_baseline(cfg, "linear", features, epochs=args.epochs, seed=seed),
        "mlp": lambda seed: head_baseline(cfg, "mlp", features, epochs=args.epochs, seed=seed),
        "cnn": lambda seed: train_cnn(cfg.data, args.epochs, seed),
        "intensity": lambda seed: logistic_baseline(cfg.data, mean_intensity),
        "thumbnail": lambda seed: logistic_baseline(cfg.data, thumbnail),
        "decoder": lambda seed: decoder_baseline(cfg, args.epochs, seed),
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in args.models}
    for seed in args.seeds:
        start = time.perf_counter()
        for name in args.models:
            results[name].append(wire_keys(runners[name](seed)))
        print(f"seed {seed} done in {time.perf_counter() - start:.0f} s", flush=True)
    print(f"\n{len(train)} train / {len(test)} test images at {cfg.data.size} px; encoder {cfg.model.encoder} "
          f"({cfg.model.weights or 'random init'}); {args.epochs} epochs; seeds {args.seeds}")
    metrics = task_info(cfg.data).headline_metrics
    print("| model | " + " | ".join(metrics) + " |\n|---|" + "---|" * len(metrics))
    summary = {}
    for name, runs in results.items():
        row = {k: (float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs]))) for k in metrics}
        summary[name] = row
        print(f"| {MODELS[name]} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in row.values()) + " |")
    print(json.dumps(summary))
    return 0


def _parse(item: str) -> tuple[str, object]:
    key, _, raw = item.partition("=")
    for cast in (int, float):
        try:
            return key, cast(raw)
        except ValueError:
            pass
    return key, {"true": True, "false": False}.get(raw.lower(), raw.strip("'\""))


if __name__ == "__main__":
    raise SystemExit(main())
