"""Flower ServerApp: federated training of the adapter, with central evaluation and a run folder."""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from omnirad.adapters import trainable_state
from omnirad.config import SPECTRAL, Config, ConfigError, load_config
from omnirad.data.report import partition_report
from omnirad.data.sites import partition_class_names, partition_labels, pooled_train, site_partitions, task_info
from omnirad.logs import show_progress
from omnirad.personalization import local_keys
from omnirad.site import CentralEvaluator, encoder_for, new_model
from omnirad.spectral import bank_to_config
from server.run_folder import RunFolder
from strategies import build_strategy
from strategies.spectral_bank import collect_spectral_bank

app = ServerApp()
show_progress()


def check_federation(grid: Grid, cfg: Config) -> None:
    """Fail before any training when the simulated federation does not match data.num-sites."""
    num_nodes = len(list(grid.get_node_ids()))
    if num_nodes != cfg.data.num_sites:
        raise ConfigError(
            f"data.num-sites={cfg.data.num_sites} but the federation has {num_nodes} SuperNodes: run "
            f"`flwr run . --federation-config \"num-supernodes={cfg.data.num_sites}\"` or set "
            f"data.num-sites={num_nodes}"
        )


class RoundEnd:
    """Flower's ``evaluate_fn``: called after every round, it scores and records the round."""

    def __init__(self, cfg: Config, folder: RunFolder, bank: torch.Tensor | None = None) -> None:
        self.evaluator = CentralEvaluator(cfg, bank)
        self.selection_metric = task_info(cfg).selection_metric
        self.folder = folder
        self.best_score = float("-inf")
        self.best_state: dict[str, Any] | None = None

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        state = arrays.to_torch_state_dict()
        metrics = self.evaluator(state)
        if server_round > 0:
            line = self.folder.end_round(server_round, metrics)
            score = line["federated-val"].get(self.selection_metric, float("-inf"))
            if score > self.best_score:
                self.best_score, self.best_state = score, state
        return MetricRecord(metrics)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = load_config(context.run_config)
    check_federation(grid, cfg)
    folder = RunFolder.create(cfg)
    print(f"OmniRad-FL run folder: {folder.path}", flush=True)
    if cfg.data.dataset != "files":  # a simulated split of a pool: the server can describe it
        labels = partition_labels(pooled_train(cfg))
        folder.write_partition(partition_report(labels, site_partitions(cfg), partition_class_names(cfg)))
    encoder = encoder_for(cfg)
    model = new_model(cfg)
    kept_at_sites = local_keys(model, cfg.personalization.mode, cfg.model.adapter)
    initial = {k: v for k, v in trainable_state(model).items() if k not in kept_at_sites}
    if cfg.personalization.mode == "fedper":
        print("personalization.mode=fedper: each site keeps its own output layer, so there is no global model "
              "to score on the server's test set; the sites' validation metrics are the result", flush=True)
    bank = None
    if cfg.strategy.name == SPECTRAL:
        bank = collect_spectral_bank(grid, cfg.spectral.frequency_size ** 2)
        print(f"Spectral knowledge bank: {len(bank)} centroids from {cfg.data.num_sites} sites", flush=True)
    instructions = ConfigRecord(bank_to_config(bank)) if bank is not None else None
    round_end = RoundEnd(cfg, folder, bank)
    strategy = build_strategy(cfg, folder)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial),
        num_rounds=cfg.num_server_rounds,
        timeout=cfg.strategy.round_timeout,
        train_config=instructions,
        evaluate_config=instructions,
        evaluate_fn=round_end,
    )
    final_state = result.arrays.to_torch_state_dict() if result.arrays is not None else initial
    summary = folder.finish(
        final_state,
        round_end.best_state,
        {
            "encoder": cfg.model.encoder,
            "weights": cfg.model.weights or "random init",
            "adapter": cfg.model.adapter,
            "personalization": cfg.personalization.mode,
            "adapter-parameter-bytes": sum(t.numel() * t.element_size() for t in initial.values()),
            "local-parameter-bytes": sum(t.numel() * t.element_size() for k, t in model.named_parameters() if k in kept_at_sites),
            "encoder-parameter-bytes": sum(p.numel() * p.element_size() for p in encoder.parameters()),
            "num-sites": cfg.data.num_sites,
            **({"spectral-bank-rows": len(bank)} if bank is not None else {}),
        },
    )
    final, where = (summary["final"], "test") if summary["final"] else (summary["final-federated-val"], "site validation")
    scores = ", ".join(f"{name} {final.get(name, float('nan')):.3f}" for name in task_info(cfg).headline_metrics)
    print(
        f"Finished {summary['rounds']} rounds in {summary['wall-seconds']:.0f} s: {where} {scores} "
        f"({cfg.model.encoder}, weights: {cfg.model.weights or 'random init'}, {cfg.model.adapter}). "
        f"Results: {folder.path}",
        flush=True,
    )
