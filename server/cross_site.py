"""Cross-site evaluation at the end of a run (``run.cross-site``): every site's final model, and the
global one, scored on every site's validation split.

Personalised runs end with a model per site (its FedPer output layer or FedBN norms, or a copy
fine-tuned locally with ``personalization.finetune-epochs``); who gains from it, and who would
lose with another site's, is what the matrix shows. The server asks each site for its own tensors
(``query.cross_site_model``), completes each site's model with the final shared tensors, sends all
of them to every site (``query.cross_site_score``) and gets back scalar metrics only. The matrix
goes to summary.json (``cross-site``: models, sites and each metric per model and site), the report
and ``cross-site.png`` (the run's selection metric).

A site's own tensors leave it for this (to the server and the other sites): turn it off with
``run.cross-site=off`` where they must not.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from omnirad.data.sites import task_info
from omnirad.data.sources import source_of
from omnirad.multitask import is_multitask
from omnirad.personalization import NO_PERSONALIZATION
from omnirad.protocol import (
    ARRAYS,
    CONFIG,
    CROSS_SITE_FINETUNED,
    CROSS_SITE_MODEL_PREFIX,
    METRICS,
    NUM_EXAMPLES,
    QUERY_CROSS_SITE_MODEL,
    QUERY_CROSS_SITE_SCORE,
    SERVER_ROUND,
    SITE_ID,
)
from omnirad_fl.server.phases import PHASES, ServerRun
from omnirad_fl.server.plots import plot_cross_site
from omnirad_fl.strategies.site_queries import ask_every_site

log = logging.getLogger(__name__)
PLOT_FILE = "cross-site.png"


def cross_site_on(run: ServerRun) -> bool:
    """``run.cross-site``: on, off, or (``auto``) on for personalised simulated runs; a run with a
    model per task group (multi-task) has no single model to cross. ``auto`` never runs it in
    deployment: a hospital's own layers would leave it, which its operators must choose (``on``)."""
    choice = run.cfg.run.cross_site
    if choice == "off" or is_multitask(run.cfg.multitask):
        return False
    if choice == "on":
        return True
    personal = run.cfg.personalization.mode != NO_PERSONALIZATION or run.cfg.personalization.finetune_epochs > 0
    if personal and source_of(run.cfg.data.dataset).deployed:
        log.info("cross-site evaluation not run: it would send each site's own layers to the other sites; "
                 "set run.cross-site=on to run it")
        return False
    return personal


def site_of(content: RecordDict, node: int) -> str:
    metrics = content.get(METRICS)
    return str(int(metrics[SITE_ID])) if metrics is not None and SITE_ID in metrics else str(node)


@PHASES.register("cross-site", "report", applies=cross_site_on)
def cross_site(run: ServerRun) -> None:
    cfg = run.cfg
    final = run.final if run.final is not None else run.initial
    config = ConfigRecord({**run.instructions, SERVER_ROUND: cfg.num_server_rounds})
    replies = ask_every_site(run.grid, QUERY_CROSS_SITE_MODEL, "cross-site evaluation: each site's model",
                             content=RecordDict({ARRAYS: ArrayRecord(final), CONFIG: config}))
    models: dict[str, dict[str, torch.Tensor]] = {}
    if cfg.personalization.mode != "fedper":  # FedPer's global model has no trained output layer
        models["global"] = dict(final)
    for node, content in sorted(replies.items(), key=lambda item: int(site_of(item[1], item[0]))):
        site = site_of(content, node)
        own = content[ARRAYS].to_torch_state_dict() if ARRAYS in content else {}
        if own:
            models[f"site {site}"] = {**final, **own}
        if CROSS_SITE_FINETUNED in content:
            models[f"site {site} fine-tuned"] = content[CROSS_SITE_FINETUNED].to_torch_state_dict()
    if not models:
        log.warning("cross-site evaluation: no model to score (no site kept its own tensors)")
        return
    names = {f"{CROSS_SITE_MODEL_PREFIX}{i}": name for i, name in enumerate(models)}
    sent = RecordDict({CONFIG: config, **{key: ArrayRecord(models[name]) for key, name in names.items()}})
    scores = ask_every_site(run.grid, QUERY_CROSS_SITE_SCORE, "cross-site evaluation: scores", content=sent)
    matrix: dict[str, dict[str, dict[str, float]]] = {name: {} for name in models}
    for node, content in scores.items():
        site = site_of(content, node)
        for key, name in names.items():
            matrix[name][site] = {k: float(v) for k, v in content[key].items() if k != NUM_EXAMPLES}
    metric = task_info(cfg.data).selection_metric
    run.summary["cross-site"] = summarise(matrix, metric)
    selected = {name: {site: values.get(metric, float("nan")) for site, values in row.items()}
                for name, row in matrix.items()}
    plot_cross_site(selected, metric, run.need_folder().path / PLOT_FILE)
    log.info("Cross-site evaluation: %d models on %d sites' validation splits (%s)", len(models), len(scores),
             PLOT_FILE)


def summarise(matrix: dict[str, dict[str, dict[str, float]]], metric: str) -> dict[str, Any]:
    """summary.json's ``cross-site``: the matrix, and for the selection metric each site's own model
    against the global one and the mean of the other sites' models on its split."""
    sites = sorted({site for row in matrix.values() for site in row}, key=int)
    gains: dict[str, dict[str, float]] = {}
    for site in sites:
        own = matrix.get(f"site {site}", {}).get(site, {}).get(metric)
        others = [row[site][metric] for name, row in matrix.items()
                  if name.startswith("site ") and name != f"site {site}" and not name.endswith("fine-tuned")
                  and metric in row.get(site, {})]
        entry = {}
        if own is not None:
            entry["own"] = own
            if others:
                entry["others-mean"] = sum(others) / len(others)
        if "global" in matrix and metric in matrix["global"].get(site, {}):
            entry["global"] = matrix["global"][site][metric]
        tuned = matrix.get(f"site {site} fine-tuned", {}).get(site, {}).get(metric)
        if tuned is not None:
            entry["fine-tuned"] = tuned
        gains[site] = entry
    return {"metric": metric, "models": list(matrix), "sites": sites, "matrix": matrix, "by-site": gains}
