"""t-SNE of the encoder's features of every site's training images, coloured by site and by class,
for one or more encoders side by side (as the OmniRad paper shows its latent space):

    python simulations/studies/plot_ssl_embedding.py docs/ssl-embedding.png "random init=" \\
        "federated MAE=weights/fedssl-modality.safetensors" data.size=32 data.partition=modality

Each encoder is ``LABEL=WEIGHTS`` (empty weights: the seeded random init). Configuration keys pick
the data and the split, as in a run; every site's images are drawn, up to ``--per-site`` each.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend
from probe_encoders import encoders_and_keys  # a study beside this one (run as a script)
from sklearn.manifold import TSNE

from omnirad.config import Config, parse_overrides
from omnirad.configure import load_config
from omnirad.data.sites import partition_class_names, pooled_train, site_partitions
from omnirad.encoders import create_encoder
from omnirad.plan import RunPlan
from omnirad.training import encode
from omnirad_fl.simulations.flower_local import DEFAULT_NUM_SUPERNODES


def site_sample(cfg: Config, per_site: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, their site and their class: up to ``per_site`` of each site's pooled images."""
    pool, rng = pooled_train(cfg.data), np.random.default_rng(cfg.run.seed)
    chosen = [rng.permutation(part)[:per_site] for part in site_partitions(cfg.data, seed=cfg.run.seed)]
    index = np.concatenate(chosen)
    sites = np.concatenate([np.full(len(c), s) for s, c in enumerate(chosen)])
    return pool.images[index], sites, pool.labels[index]


def plot(path: Path, cfg: Config, encoders: list[tuple[str, str]], per_site: int) -> None:
    images, sites, labels = site_sample(cfg, per_site)
    classes = partition_class_names(cfg.data)
    fig = Figure(figsize=(4.2 * len(encoders), 8.4))
    axes = fig.subplots(2, len(encoders), squeeze=False)
    for col, (label, weights) in enumerate(encoders):
        features = encode(create_encoder(cfg.model.encoder, weights, cfg.data.size), images).numpy()
        features = (features - features.mean(0)) / (features.std(0) + 1e-6)
        points = TSNE(n_components=2, perplexity=30, init="pca", random_state=cfg.run.seed).fit_transform(features)
        for row, (colour_by, names, title) in enumerate(((sites, [f"site {s}" for s in range(cfg.data.num_sites)], "site"),
                                                         (labels, list(classes), "class"))):
            ax = axes[row, col]
            for value, name in enumerate(names):
                keep = colour_by == value
                ax.scatter(points[keep, 0], points[keep, 1], s=5, label=name)
            ax.set_title(f"{label}: coloured by {title}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.legend(fontsize=7, markerscale=2, loc="best")
    fig.suptitle(f"t-SNE of {cfg.model.encoder} features ({cfg.data.size} px, data.partition={cfg.data.partition}, "
                 f"{per_site} images per site)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python simulations/studies/plot_ssl_embedding.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("items", nargs="+", metavar="LABEL=WEIGHTS or KEY=VALUE",
                        help="encoders (LABEL=WEIGHTS, the label without dots) and configuration keys (with dots)")
    parser.add_argument("--per-site", type=int, default=250)
    args = parser.parse_args(argv)
    encoders, keys = encoders_and_keys(parser, args.items)
    cfg = RunPlan.of(load_config(parse_overrides(keys))).in_federation(DEFAULT_NUM_SUPERNODES).config  # unset: as `make demo`
    plot(args.path, cfg, encoders, args.per_site)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
