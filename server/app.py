"""Flower ServerApp: federated training of the adapter, with central evaluation and a run folder."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from omnirad.adapters import tensor_bytes, trainable_state
from omnirad.broadcast import Broadcast
from omnirad.config import DEPLOYMENT, NATURAL_SPLITS, SPECTRAL, Config, ConfigError, load_config
from omnirad.data.report import partition_report
from omnirad.data.sites import partition_class_names, partition_labels, pooled_train, site_partitions
from omnirad.encoders import ENCODER_FINGERPRINT_KEY, weights_fingerprint
from omnirad.logs import show_progress
from omnirad.multitask import is_multitask
from omnirad.site import CentralEvaluator, encoder_for, kept_at_sites, new_model
from server.checkpoint import Checkpoint, load_checkpoint, restore_strategy_state, save_checkpoint
from server.multitask import MultiTaskEvaluator, multitask_strategy, start_groups, task_summary
from server.pretraining import pretrain_encoder, pretrained_instructions
from server.run_folder import RunFolder, best_round
from strategies import build_strategy
from strategies.site_queries import collect_standardisation
from strategies.spectral_bank import collect_spectral_bank

app = ServerApp()
show_progress()


def check_federation(grid: Grid, cfg: Config) -> None:
    """Fail before any training when the simulated federation does not match data.num-sites; in
    deployment, wait up to ``strategy.join-timeout`` for every site to connect (sites come online
    when their IT teams start them: the strategy then waits for at least ``strategy.min-sites``)."""
    if cfg.data.dataset == DEPLOYMENT:
        connected = wait_for_sites(grid, cfg.data.num_sites, cfg.strategy.join_timeout)
        if connected < cfg.data.num_sites:
            print(f"WARNING: only {connected} of {cfg.data.num_sites} sites connected within strategy.join-timeout="
                  f"{cfg.strategy.join_timeout:.0f} s; the run starts once strategy.min-sites are there", flush=True)
        return
    num_nodes = len(list(grid.get_node_ids()))
    if num_nodes != cfg.data.num_sites:
        raise ConfigError(
            f"data.num-sites={cfg.data.num_sites} but the federation has {num_nodes} SuperNodes: run "
            f"`flwr run . --federation-config \"num-supernodes={cfg.data.num_sites}\"` or set "
            f"data.num-sites={num_nodes}"
        )


def wait_for_sites(grid: Grid, expected: int, timeout: float, poll: float = 2.0) -> int:
    """Wait until ``expected`` sites are connected or ``timeout`` seconds pass; returns how many are."""
    deadline, reported = time.monotonic() + timeout, -1
    while True:
        connected = len(list(grid.get_node_ids()))
        if connected != reported:
            print(f"sites connected: {connected} of {expected}", flush=True)
            reported = connected
        if connected >= expected or time.monotonic() >= deadline:
            return connected
        time.sleep(poll)


def site_instructions(cfg: Config) -> dict[str, str]:
    """What every train and evaluate message carries besides the adapter: the fingerprint of the
    server's encoder weights (SHA-256 of the file, or random-init), which a deployed site compares
    with its own before it trains."""
    return {ENCODER_FINGERPRINT_KEY: weights_fingerprint(cfg.model.weights), **pretrained_instructions(cfg)}


class RoundEnd:
    """Flower's ``evaluate_fn``: called after every round, it scores and records the round, keeps
    the best adapter (by the run folder's selection metric) and checkpoints the run. Flower counts
    rounds from 1 even in a resumed run: ``done_rounds`` turns its numbers into the run's."""

    def __init__(self, evaluator: Callable[[dict[str, torch.Tensor]], dict[str, float]], folder: RunFolder,
                 done_rounds: int = 0) -> None:
        self.evaluator = evaluator
        self.selection_metric = folder.selection_metric
        self.folder, self.done_rounds = folder, done_rounds
        best = best_round(folder.rounds, self.selection_metric)
        self.best_score = best["federated-val"][self.selection_metric] if best else float("-inf")
        self.strategy: Strategy | None = None  # set once built: its state goes into each checkpoint

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        state = arrays.to_torch_state_dict()
        metrics = self.evaluator(state)
        if server_round > 0:
            server_round += self.done_rounds
            line = self.folder.end_round(server_round, metrics)
            score = line["federated-val"].get(self.selection_metric, float("-inf"))
            if score > self.best_score:
                self.best_score = score
                self.folder.save_best(state)
            if self.strategy is not None:
                save_checkpoint(self.folder.path, server_round, state, aggregating_strategy(self.strategy))
        return MetricRecord(metrics)


def aggregating_strategy(strategy: Strategy) -> Strategy:
    """The strategy that holds the aggregation state: the wrapped one under Flower's DP wrapper."""
    return getattr(strategy, "strategy", strategy)


def resumable(cfg: Config, kept: frozenset[str]) -> tuple[Path, Checkpoint]:
    """The run folder and checkpoint to go on from; refuses what a server-side checkpoint cannot restore."""
    folder = Path(cfg.run.resume_from).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"run.resume-from={cfg.run.resume_from!r}: no such run folder")
    if kept or cfg.privacy.dp:
        raise ConfigError("run.resume-from: personalization, spectral prompts and DP keep state at the sites "
                          "(local tensors, privacy accounts) that a new run does not have yet; resume is for "
                          "runs without them")
    return folder, load_checkpoint(folder)


def gather_broadcast(grid: Grid, cfg: Config, folder: RunFolder) -> Broadcast:
    """What the configured model needs from every site before round 1: the spectral bank, the
    pooled feature standardisation (written to the run folder: the final head needs it)."""
    bank = standardisation = None
    if cfg.strategy.name == SPECTRAL:
        bank = collect_spectral_bank(grid, cfg.spectral.frequency_size ** 2)
        print(f"Spectral knowledge bank: {len(bank)} centroids from {cfg.data.num_sites} sites", flush=True)
    if cfg.model.standardise_features:
        standardisation, images = collect_standardisation(grid)
        folder.write_standardisation(standardisation)
        print(f"Feature standardisation: mean and std of {standardisation.mean.numel()} feature dimensions pooled "
              f"over {images} training images of {len(grid.get_node_ids())} sites", flush=True)
    return Broadcast(bank, standardisation)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = load_config(context.run_config)
    check_federation(grid, cfg)
    cfg = pretrain_encoder(grid, cfg)  # ssl.rounds > 0: model.weights is now the pretrained encoder
    if cfg.num_server_rounds == 0:
        return
    encoder = encoder_for(cfg)
    model = None if is_multitask(cfg) else new_model(cfg)  # a multi-task run has a model per task
    kept = kept_at_sites(cfg, model) if model is not None else frozenset()
    initial = {k: v for k, v in trainable_state(model).items() if k not in kept} if model is not None else {}
    checkpoint = None
    if cfg.run.resume_from:
        resume_folder, checkpoint = resumable(cfg, kept)
        folder = RunFolder.reopen(cfg, resume_folder, checkpoint.server_round)
        initial = checkpoint.arrays
        print(f"OmniRad-FL resumes {folder.path} after round {checkpoint.server_round}", flush=True)
    else:
        folder = RunFolder.create(cfg)
        print(f"OmniRad-FL run folder: {folder.path}", flush=True)
        if cfg.data.dataset not in NATURAL_SPLITS:  # a simulated split of a pool: the server can describe it
            labels = partition_labels(pooled_train(cfg))
            folder.write_partition(partition_report(labels, site_partitions(cfg), partition_class_names(cfg)))
    done_rounds = checkpoint.server_round if checkpoint is not None else 0
    groups = None
    if is_multitask(cfg):
        groups, initial = start_groups(grid, cfg, folder)
    if cfg.personalization.mode == "fedper":
        print("personalization.mode=fedper: each site keeps its own output layer, so there is no global model "
              "to score on the server's test set; the sites' validation metrics are the result", flush=True)
    broadcast = gather_broadcast(grid, cfg, folder)
    instructions = ConfigRecord({**site_instructions(cfg), **broadcast.to_config()})
    if groups is not None:
        round_end = RoundEnd(MultiTaskEvaluator(cfg, groups), folder, done_rounds)
        strategy = multitask_strategy(cfg, folder, groups)
    else:
        round_end = RoundEnd(CentralEvaluator(cfg, broadcast), folder, done_rounds)
        strategy = build_strategy(cfg, folder, done_rounds)
    if checkpoint is not None:
        restore_strategy_state(aggregating_strategy(strategy), checkpoint.strategy_state)
    round_end.strategy = strategy
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial),
        num_rounds=max(0, cfg.num_server_rounds - done_rounds),
        timeout=cfg.strategy.round_timeout,
        train_config=instructions,
        evaluate_config=instructions,
        evaluate_fn=round_end,
    )
    final_state = result.arrays.to_torch_state_dict() if result.arrays is not None else initial
    summary = folder.finish(
        final_state,
        {
            **({"resumed-after-round": done_rounds} if done_rounds else {}),
            "encoder": cfg.model.encoder,
            "weights": cfg.model.weights or "random init",
            "adapter": cfg.model.adapter,
            "personalization": cfg.personalization.mode,
            "adapter-parameter-bytes": tensor_bytes(initial.values()),
            "local-parameter-bytes": tensor_bytes(t for k, t in model.named_parameters() if k in kept)
            if model is not None else 0,
            **(task_summary(groups, initial) if groups is not None else {}),
            "encoder-parameter-bytes": tensor_bytes(encoder.parameters()),
            "num-sites": cfg.data.num_sites,
            **({"spectral-bank-rows": len(broadcast.bank)} if broadcast.bank is not None else {}),
            "standardise-features": broadcast.standardisation is not None,
        },
    )
    final, where = (summary["final"], "test") if summary["final"] else (summary["final-federated-val"], "site validation")
    scores = ", ".join(f"{name} {final.get(name, float('nan')):.3f}" for name in folder.headline_metrics)
    print(
        f"Finished {summary['rounds']} rounds in {summary['wall-seconds']:.0f} s: {where} {scores} "
        f"({cfg.model.encoder}, weights: {cfg.model.weights or 'random init'}, {cfg.model.adapter}). "
        f"Results: {folder.path}",
        flush=True,
    )
