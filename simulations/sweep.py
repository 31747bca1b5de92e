"""Sweep federated variants over splits and seeds, next to pooled and local-only training.

Every (split, seed, variant) is one ``flwr run .`` (as ``make demo`` does); each result is
appended to ``--out`` (JSON lines) as soon as it exists, so an interrupted sweep resumes where it
stopped. The table gives, per split and variant, mean ± standard deviation over seeds of:

- **global**: the final global model on the server's test set (none under FedPer: no global head);
- **selected**: the global model of the round with the best federated validation score (the
  sites' validation splits, never the test set), on the server's test set: what a run would ship;
- **worst site**: the lowest site-validation value of the model each site ends with;
- **personalized**: the site-validation mean of each site's own model: its FedPer/FedBN model, or
  the global model fine-tuned locally (``personalization.finetune-epochs``) for the others.

Next to ``--out`` go the table (``.md``) and a bar chart of the three views (``.png``).

    python -m omnirad_fl.simulations.sweep --out results/strategies.jsonl            # every strategy, 3 splits, 3 seeds
    python -m omnirad_fl.simulations.sweep --seeds 0 --splits "iid:data.partition='iid'" --variants "fedavg:" "fedprox:strategy.name='fedprox'"

A variant or split is ``label:key=value,...`` as in ``simulations.compare_runs``. With the feature
cache on (the default here) the sites' features are encoded once per split and seed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
from flwr.common.config import parse_config_args

from omnirad.config import toml_literal
from omnirad.data.sites import task_info
from omnirad.errors import ConfigError
from omnirad_fl.server.plots import plot_sweep
from omnirad_fl.server.run_config import load_run_config
from omnirad_fl.simulations import references
from omnirad_fl.simulations.compare_runs import variant_overrides
from omnirad_fl.simulations.demo import local_superlink, run_simulation, simulation_config
from omnirad_fl.simulations.flower_local import DEFAULT_HTTP_PORT
from omnirad_fl.simulations.side_by_side import LOCAL, POOLED, read_rows
from omnirad_fl.strategies import STRATEGIES

SPLITS = ("iid:data.partition='iid'", "Dirichlet 0.1:data.partition='dirichlet',data.alpha=0.1",
          "one style per site:data.partition='modality'")
VARIANTS = (*(f"{name}:strategy.name='{name}'" for name, spec in STRATEGIES.items() if spec.prepare is None),
            "fedper:personalization.mode='fedper'", "fedbn:personalization.mode='fedbn'")
SHARED = "num-server-rounds=10 personalization.finetune-epochs=5 model.adapter='mlp'"  # the strategies study: an MLP head from random
VIEWS = ("global", "selected", "worst-site", "personalized")  # a result row's views, as the table shows them
REFERENCES = {POOLED: references.pooled, LOCAL: references.local_only}


def federated_row(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The sweep's three views of one finished run (see the module docstring)."""
    val = summary["final-federated-val"]
    if summary.get("personalization", "none") != "none":
        personalized = {k: v for k, v in val.items() if not k.startswith("finetuned-")}
    else:
        personalized = {k.removeprefix("finetuned-"): v for k, v in val.items() if k.startswith("finetuned-")}
    worst = {k: v for k, v in summary["final-worst-site"].items() if not k.startswith("finetuned-")}
    selected = summary["best"]["global"] if summary.get("best") else {}
    return {"global": summary["final"], "selected": selected, "worst-site": worst, "personalized": personalized,
            "rejected": sum(len(v) for v in summary.get("rejected-updates", {}).values()),
            "epsilon": max(summary.get("epsilon-per-site", {}).values(), default=None),
            "bytes-up-per-site-round": summary["bytes-up-per-site-round"], "wall-seconds": summary["wall-seconds"],
            "run-folder": summary["run-folder"]}


def merged(*parts: str) -> str:
    """Override strings joined, a later one's key replacing an earlier one's (TOML refuses a key twice)."""
    flat: dict[str, Any] = {}
    for part in parts:
        if part.strip():
            try:
                flat.update(parse_config_args([part]))
            except click.ClickException as err:  # Flower's message names neither the part nor the label rule
                raise ConfigError(f"{part!r}: not key=value overrides (strings quoted; a variant's or split's label "
                                  "ends at its first ':', so a label cannot hold one)") from err
    return " ".join(f"{key}={toml_literal(value)}" for key, value in flat.items())


def run_one(overrides: str, label: str, http_port: int, reference: str = "") -> dict[str, Any]:
    """One federated run or, with ``reference``, that reference training, as a result row."""
    if reference:
        started = time.perf_counter()
        cfg = simulation_config(parse_config_args([overrides]))  # the sites the federated runs have
        row = REFERENCES[reference](cfg)
        return {**row, "wall-seconds": round(time.perf_counter() - started, 1)}
    summary_path = run_simulation(overrides, http_port)
    if summary_path is None:
        raise RuntimeError(f"{label}: the run did not finish (see the log above); overrides: {overrides}")
    return federated_row({**json.loads(summary_path.read_text()), "run-folder": str(summary_path.parent)})


def done_keys(out: Path) -> set[tuple[str, str, int, str]]:
    if not out.exists():
        return set()
    return {(r["shared"], r["split"], r["seed"], r["variant"]) for r in read_rows(out)}


def view_stats(rows: list[dict[str, Any]], metric: str) -> dict[str, dict[str, dict[str, tuple[float, float]]]]:
    """``[split][variant][view] = (mean, std)`` over seeds; views without a value are left out."""
    stats: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
    for row in rows:
        stats.setdefault(row["split"], {}).setdefault(row["variant"], {})
    for split, variants in stats.items():
        for variant, views in variants.items():
            runs = [r for r in rows if r["split"] == split and r["variant"] == variant]
            for view in VIEWS:
                values = [r[view][metric] for r in runs if not math.isnan(r.get(view, {}).get(metric, math.nan))]
                if values:
                    views[view] = (float(np.mean(values)), float(np.std(values)))
    return stats


def table(rows: list[dict[str, Any]], metric: str) -> str:
    """Markdown: one block per split, a line per variant, mean ± std over seeds (and, under DP, the
    largest epsilon any site reached)."""
    with_dp = any(r.get("epsilon") is not None for r in rows)
    lines = []
    for split, variants in view_stats(rows, metric).items():
        seeds = sorted({r["seed"] for r in rows if r["split"] == split})
        lines += [f"\n**{split}** (seeds {', '.join(map(str, seeds))}; {metric})\n",
                  "| variant | global (server test) | selected round (server test) | worst site | personalized | "
                  "updates left out |" + (" epsilon, largest site |" if with_dp else ""),
                  "|---|---|---|---|---|---|" + ("---|" if with_dp else "")]
        for variant, views in variants.items():
            cells = [f"{views[v][0]:.3f} ± {views[v][1]:.3f}" if v in views else "-"
                     for v in VIEWS]
            runs = [r for r in rows if r["split"] == split and r["variant"] == variant]
            rejected = sum(r.get("rejected", 0) for r in runs) if not runs[0].get("reference", variant in REFERENCES) else "-"
            line = f"| {variant} | " + " | ".join(cells) + f" | {rejected} |"
            if with_dp:
                epsilons = [r["epsilon"] for r in runs if r.get("epsilon") is not None]
                line += f" {max(epsilons):.2f} |" if epsilons else " - |"
            lines.append(line)
    return "\n".join(lines)


def run_sweep(variants: list[str], splits: list[str], seeds: list[int], *, shared_overrides: str, out: Path,
              with_references: bool = True, references_per_variant: bool = False,
              port: int = DEFAULT_HTTP_PORT) -> list[dict[str, Any]]:
    """Run every (seed, split, variant) not yet in ``out`` and write its table (``.md``) and plot
    (``.png``); returns the rows of this sweep. Every configuration is checked before the first run.
    The references train the shared configuration, or with ``references_per_variant`` each
    variant's own (labelled ``<reference>: <variant>``)."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    given = parse_config_args([shared_overrides]) if shared_overrides.strip() else {}
    defaults = {"model.feature-cache": "true", "model.cache-dir": f"'{out.parent / 'feature-cache'}'",
                "run.output-dir": f"'{out.parent / 'runs' / out.stem}'"}  # the sweep's own, unless the user set them
    shared = " ".join([*(f"{k}={v}" for k, v in defaults.items() if k not in given), shared_overrides]).strip()
    references = list(REFERENCES) if with_references else []
    cells: list[tuple[str, str]] = []  # (variant, reference or "")
    if references_per_variant:
        for variant in variants:
            cells += [(variant, reference) for reference in references] + [(variant, "")]
    else:
        cells = [*((f"{reference}:", reference) for reference in references), *((v, "") for v in variants)]
    # seeds outermost: a sweep stopped early still covers every split and variant for the first seeds
    plan = [(split, seed, variant, reference) for seed in seeds for split in splits for variant, reference in cells]

    def overrides_of(split: str, seed: int, variant: str) -> str:
        return merged(shared, variant_overrides(split)[1], f"run.seed={seed}", variant_overrides(variant)[1])

    def label_of(variant: str, reference: str) -> str:
        label = variant_overrides(variant)[0]
        return f"{reference}: {label}" if reference and references_per_variant else label

    for split, seed, variant, _ in plan:
        load_run_config(parse_config_args([overrides_of(split, seed, variant)]))
    done = done_keys(out)
    link = local_superlink(port)
    with contextlib.nullcontext() if link.healthy() else link:  # one SuperLink for the whole sweep
        for number, (split, seed, variant, reference) in enumerate(plan, 1):
            split_label, label = variant_overrides(split)[0], label_of(variant, reference)
            if (shared_overrides, split_label, seed, label) in done:
                continue
            print(f"\n=== sweep {number}/{len(plan)}: {split_label}, seed {seed}, {label} ===", flush=True)
            row = run_one(overrides_of(split, seed, variant), label, port, reference)
            with open(out, "a") as f:
                f.write(json.dumps({"shared": shared_overrides, "split": split_label, "seed": seed, "variant": label,
                                    "reference": reference, **row}) + "\n")
    rows = [r for r in read_rows(out) if r["shared"] == shared_overrides]
    metric = task_info(load_run_config(parse_config_args([shared])).data).selection_metric
    out.with_suffix(".md").write_text(f"Shared overrides: {shared_overrides}\n{table(rows, metric)}\n")
    plot_sweep(view_stats(rows, metric), out.with_suffix(".png"), metric)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help="label:key=value,...")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), help="label:key=value,...")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--shared", default=SHARED, help="overrides for every run")
    parser.add_argument("--no-references", action="store_true", help="skip pooled and local-only training")
    parser.add_argument("--references-per-variant", action="store_true",
                        help="pooled and local-only training of each variant's configuration, not only the shared one")
    parser.add_argument("--out", type=Path, default=Path("results/sweep.jsonl"))
    parser.add_argument("--port", type=int, default=DEFAULT_HTTP_PORT,
                        help="loopback port of the sweep's SuperLink (another port lets two sweeps run side by side)")
    args = parser.parse_args(argv)
    try:  # every run's configuration is checked before the first one starts
        run_sweep(args.variants, args.splits, args.seeds, shared_overrides=args.shared, out=args.out,
                  with_references=not args.no_references, references_per_variant=args.references_per_variant,
                  port=args.port)
    except ConfigError as err:
        parser.error(str(err))
    table_path = args.out.resolve().with_suffix(".md")
    print(f"{table_path.read_text()}\nTable: {table_path}; plot: {table_path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
