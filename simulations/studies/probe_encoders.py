"""Converged, central probes of frozen encoders: how well their features separate the embedded
data's body regions and imaging styles, independent of any federated training recipe.

    python simulations/studies/probe_encoders.py "random init=" "central MAE=weights/central-mae.safetensors" data.size=32

Each encoder is ``LABEL=WEIGHTS`` (empty weights: the seeded random init). Features of the pooled
training images and the server's test images; three probes, all macro-F1 on the test images:

- ``lr-z``: logistic regression run to convergence on features z-scored with the training
  images' statistics (the usual SSL linear probe);
- ``knn``: 20 nearest training images by cosine similarity, majority vote;
- ``style``: ``lr-z`` for the imaging style (the group each image was drawn from) instead of the
  region: how much of what the encoder encodes is scanner or protocol rather than anatomy.

A JSON line per encoder is printed after the table (``--json`` appends them to a file).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from omnirad.config import Config, parse_overrides
from omnirad.configure import load_config
from omnirad.data.sites import LabelledImages, pooled_train, server_test_set
from omnirad.encoders import create_encoder
from omnirad.training import encode


def macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(f1_score(truth, predicted, average="macro"))


def probe(train_x: np.ndarray, test_x: np.ndarray, train_y: np.ndarray, test_y: np.ndarray) -> float:
    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(max_iter=5000).fit(scaler.transform(train_x), train_y)
    return macro_f1(test_y, clf.predict(scaler.transform(test_x)))


def probe_encoder(cfg: Config, weights: str, train: LabelledImages, test: LabelledImages) -> dict[str, float]:
    """The three probes of one encoder (see the module docstring)."""
    encoder = create_encoder(cfg.model.encoder, weights, cfg.data.size)
    train_x, test_x = encode(encoder, train.images).numpy(), encode(encoder, test.images).numpy()
    knn = KNeighborsClassifier(n_neighbors=20, metric="cosine").fit(train_x, train.labels)
    results = {"lr-z": probe(train_x, test_x, train.labels, test.labels),
               "knn": macro_f1(test.labels, knn.predict(test_x))}
    if train.groups is not None and test.groups is not None:
        results["style"] = probe(train_x, test_x, train.groups, test.groups)
    return results


def encoders_and_keys(parser: argparse.ArgumentParser, items: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Command-line items split into encoders (``LABEL=WEIGHTS``, no dot before ``=``) and
    configuration keys (``data.size=32``); a parser error when no encoder is named."""
    keys = [item for item in items if "." in item.split("=", 1)[0]]
    encoders = [tuple(item.split("=", 1)) for item in items if item not in keys]
    if not encoders or any(len(e) != 2 for e in encoders):
        parser.error("name at least one encoder as LABEL=WEIGHTS (empty weights: random init)")
    return encoders, keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python simulations/studies/probe_encoders.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="+", metavar="LABEL=WEIGHTS or KEY=VALUE",
                        help="encoders (LABEL=WEIGHTS, the label without dots) and configuration keys (with dots)")
    parser.add_argument("--json", type=Path, help="append one JSON line per encoder to this file")
    args = parser.parse_args(argv)
    encoders, keys = encoders_and_keys(parser, args.items)
    missing = [w for _, w in encoders if w and not Path(w).is_file()]
    if missing:
        parser.error(f"no such weights file: {', '.join(missing)}")
    cfg = load_config(parse_overrides(keys))
    train, test = pooled_train(cfg.data), server_test_set(cfg.data)
    rows = [{"encoder": label, "weights": weights, **probe_encoder(cfg, weights, train, test)}
            for label, weights in encoders]
    metrics = [m for m in ("lr-z", "knn", "style") if m in rows[0]]
    print("| encoder | " + " | ".join(metrics) + " |\n|---|" + "---|" * len(metrics))
    for row in rows:
        print(f"| {row['encoder']} | " + " | ".join(f"{row[m]:.3f}" for m in metrics) + " |")
    lines = [json.dumps({**row, "size": cfg.data.size, "seed": cfg.run.seed}) for row in rows]
    print("\n".join(lines))
    if args.json:
        with args.json.open("a") as out:
            out.write("".join(line + "\n" for line in lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
