"""Centralised reference numbers on the embedded dataset: what the federated runs are measured against.

Three models trained on the pooled training images (no federation) and scored on the test set:
a linear probe and an MLP head on the frozen encoder's features, and a small CNN trained end to
end. Usage:

    python -m simulations.central_baselines [--seeds 0 1 2] [--epochs 30] [key=value ...]

Config keys (``data.size=64 model.encoder='vit-tiny'``) select data and encoder as in a run.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn

from omnirad.adapters import create_adapter
from omnirad.config import Config, load_config
from omnirad.data.sites import pooled_train, task_info, test_set
from omnirad.metrics import classification_metrics
from omnirad.site import encoder_for
from omnirad.training import encode, evaluate_adapter, images_to_tensor, train_adapter


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


def train_cnn(cfg: Config, epochs: int, seed: int) -> dict[str, float]:
    """End-to-end CNN on the pooled images; the same optimiser as the heads."""
    torch.manual_seed(seed)
    train, test = pooled_train(cfg), test_set(cfg)
    model = SmallCNN(task_info(cfg).num_classes)
    x_train, y_train = images_to_tensor(train.images), torch.as_tensor(train.labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(y_train), generator=generator).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x) for x in images_to_tensor(test.images).split(256)])
    return classification_metrics(test.labels, logits)


def head_baseline(cfg: Config, adapter: str, features: tuple, epochs: int, seed: int) -> dict[str, float]:
    train_x, train_y, test_x, test_y = features
    torch.manual_seed(seed)
    head = create_adapter(adapter, train_x.shape[1], task_info(cfg).num_classes, cfg.model.hidden_dim)
    train_adapter(head, train_x, train_y, epochs, cfg.train.lr, cfg.train.batch_size, cfg.train.weight_decay, seed)
    metrics = evaluate_adapter(head, test_x, test_y)
    metrics.pop("loss")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30, help="epochs for every model")
    parser.add_argument("overrides", nargs="*", help="configuration keys, key=value")
    args = parser.parse_args(argv)
    cfg = load_config(dict(_parse(o) for o in args.overrides))
    train, test = pooled_train(cfg), test_set(cfg)
    encoder = encoder_for(cfg)
    features = (encode(encoder, train.images, desc="pooled train"), train.labels, encode(encoder, test.images, desc="test"), test.labels)
    results: dict[str, list[dict[str, float]]] = {"linear probe": [], "mlp head": [], "small cnn": []}
    for seed in args.seeds:
        start = time.perf_counter()
        results["linear probe"].append(head_baseline(cfg, "linear", features, args.epochs, seed))
        results["mlp head"].append(head_baseline(cfg, "mlp", features, args.epochs, seed))
        results["small cnn"].append(train_cnn(cfg, args.epochs, seed))
        print(f"seed {seed} done in {time.perf_counter() - start:.0f} s", flush=True)
    print(f"\n{len(train)} train / {len(test)} test images at {cfg.data.size} px; encoder {cfg.model.encoder} "
          f"({cfg.model.weights or 'random init'}); {args.epochs} epochs; seeds {args.seeds}")
    print("| model | accuracy | macro-F1 | AUC |\n|---|---|---|---|")
    summary = {}
    for name, runs in results.items():
        row = {k: (float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs]))) for k in ("accuracy", "macro_f1", "auc")}
        summary[name] = row
        print(f"| {name} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in row.values()) + " |")
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
