"""Flower ServerApp: federated training of the adapter, with central evaluation and a run folder."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from omnirad.adapters import tensor_bytes, trainable_state
from omnirad.broadcast import Broadcast
from omnirad.closed_form import HEAD_INITS
from omnirad.config import FEDERATION_SIZE, Config, ConfigError, with_num_sites
from omnirad.data.report import partition_report
from omnirad.data.sites import partition_class_names, partition_labels, pooled_train, site_partitions
from omnirad.data.sources import source_of
from omnirad.encoders import weights_fingerprint
from omnirad.evaluation import CentralEvaluator
from omnirad.logs import show_progress
from omnirad.models import encoder_for, kept_at_sites, new_model
from omnirad.multitask import is_multitask
from omnirad.protocol import ENCODER_FINGERPRINT, RUN_KEY, SIMULATION_STATE_DIR
from omnirad_fl.server.checkpoint import Checkpoint, load_checkpoint, restore_strategy_state, save_checkpoint
from omnirad_fl.server.closed_form import closed_form_phase, closed_form_tasks, evaluate_round_zero
from omnirad_fl.server.multitask import MultiTaskEvaluator, multitask_strategy, start_groups, task_summary
from omnirad_fl.server.pretraining import pretrain_encoder, pretrained_instructions
from omnirad_fl.server.run_config import load_run_config
from omnirad_fl.server.run_folder import RunFolder, best_round
from omnirad_fl.server.vocabulary import gather_vocabulary, needs_word_count, vocabulary_instructions
from omnirad_fl.strategies import STRATEGIES, build_strategy
from omnirad_fl.strategies.site_queries import collect_standardisation

app = ServerApp()
show_progress()
log = logging.getLogger(__name__)


def check_federation(grid: Grid, cfg: Config) -> Config:
    """Fail before any training when the simulated federation does not match a given data.num-sites,
    and take the federation's size when it is not given (0); in deployment, wait up to
    ``strategy.join-timeout`` for every site to connect (sites come online when their IT teams start
    them: the strategy then waits for at least ``strategy.min-sites``)."""
    if source_of(cfg.data.dataset).deployed:
        connected = wait_for_sites(grid, cfg.data.num_sites, cfg.strategy.join_timeout)
        if connected < cfg.data.num_sites:
            log.warning("WARNING: only %d of %d sites connected within strategy.join-timeout=%.0f s; the run "
                        "starts once strategy.min-sites are there", connected, cfg.data.num_sites,
                        cfg.strategy.join_timeout)
        return cfg
    num_nodes = len(list(grid.get_node_ids()))
    if cfg.data.num_sites == FEDERATION_SIZE:
        log.info("data.num-sites=%d: the federation's size", num_nodes)
        return with_num_sites(cfg, num_nodes)
    if num_nodes != cfg.data.num_sites:
        raise ConfigError(
            f"data.num-sites={cfg.data.num_sites} but the federation has {num_nodes} SuperNodes: run "
            f"`flwr run . --federation-config \"num-supernodes={cfg.data.num_sites}\"` or set "
            f"data.num-sites={num_nodes}"
        )
    return cfg


def wait_for_sites(grid: Grid, expected: int, timeout: float, poll: float = 2.0) -> int:
    """Wait until ``expected`` sites are connected or ``timeout`` seconds pass; returns how many are."""
    deadline, reported = time.monotonic() + timeout, -1
    while True:
        connected = len(list(grid.get_node_ids()))
        if connected != reported:
            log.info("sites connected: %d of %d", connected, expected)
            reported = connected
        if connected >= expected or time.monotonic() >= deadline:
            return connected
        time.sleep(poll)


def site_instructions(cfg: Config) -> dict[str, str | list[str]]:
    """What every train and evaluate message carries besides the adapter: the fingerprint of the
    server's encoder weights (SHA-256 of the file, or random-init), which a deployed site compares
    with its own before it trains, and a captioning run's vocabulary."""
    return {ENCODER_FINGERPRINT: weights_fingerprint(cfg.model.weights), **pretrained_instructions(cfg),
            **vocabulary_instructions(cfg)}


def site_state_instructions(cfg: Config, folder: RunFolder) -> dict[str, str]:
    """Where the sites keep their state for this run: a file named by the run's key, in each site's
    own folder in deployment, in the run folder in simulation (the sites share the server's disk)."""
    where = {} if source_of(cfg.data.dataset).deployed else {SIMULATION_STATE_DIR: str(folder.path / "site-state")}
    return {RUN_KEY: folder.run_key, **where}


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
        if server_round == 0:  # Flower's look at the starting arrays: not a round of the run
            return MetricRecord(self.evaluator(state))
        return MetricRecord(self.record(server_round + self.done_rounds, state))

    def record(self, server_round: int, state: dict[str, torch.Tensor]) -> dict[str, float]:
        """Score the round's global adapter, write its line, keep it if best, checkpoint it."""
        metrics = self.evaluator(state)
        line = self.folder.end_round(server_round, metrics)
        score = line["federated-val"].get(self.selection_metric, float("-inf"))
        if score > self.best_score:
            self.best_score = score
            self.folder.save_best(state)
        if self.strategy is not None and server_round > 0:
            save_checkpoint(self.folder.path, server_round, state, self.strategy)
        return metrics


def resumable(cfg: Config) -> tuple[Path, Checkpoint]:
    """The run folder and checkpoint to go on from. What the sites keep (personal tensors, privacy
    accounts) is in their state stores, under the run's key, which the reopened folder keeps."""
    folder = Path(cfg.run.resume_from).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"run.resume-from={cfg.run.resume_from!r}: no such run folder")
    return folder, load_checkpoint(folder)


def gather_broadcast(grid: Grid, cfg: Config, folder: RunFolder) -> Broadcast:
    """What the configured model needs from every site before round 1: what the strategy asks of
    them (the spectral bank), and the pooled feature standardisation (written to the run folder:
    the final head needs it)."""
    prepare = STRATEGIES[cfg.strategy.name].prepare
    fields = prepare(grid, cfg) if prepare is not None else {}
    if cfg.model.standardise_features:
        standardisation, images = collect_standardisation(grid)
        folder.write_standardisation(standardisation)
        log.info("Feature standardisation: mean and std of %d feature dimensions pooled over %d training images "
                 "of %d sites", standardisation.mean.numel(), images, len(grid.get_node_ids()))
        fields["standardisation"] = standardisation
    return Broadcast(**fields)


def start_folder(cfg: Config, vocabulary: tuple[str, ...] = ()) -> tuple[RunFolder, Checkpoint | None]:
    """A new run folder (with the split described, for a simulated one, and a federated vocabulary
    kept), or the stopped run's."""
    if cfg.run.resume_from:
        resume_folder, checkpoint = resumable(cfg)
        folder = RunFolder.reopen(cfg, resume_folder, checkpoint.server_round)
        log.info("OmniRad-FL resumes %s after round %d", folder.path, checkpoint.server_round)
        return folder, checkpoint
    folder = RunFolder.create(cfg, vocabulary)
    log.info("OmniRad-FL run folder: %s", folder.path)
    if not source_of(cfg.data.dataset).natural_split:  # a simulated split of a pool: the server can describe it
        labels = partition_labels(pooled_train(cfg))
        folder.write_partition(partition_report(labels, site_partitions(cfg), partition_class_names(cfg)))
    return folder, None


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = load_run_config(context.run_config)
    cfg = check_federation(grid, cfg)  # data.num-sites: the federation's size unless given
    cfg = pretrain_encoder(grid, cfg)  # ssl.rounds > 0: model.weights is now the pretrained encoder
    if cfg.num_server_rounds == 0 and HEAD_INITS[cfg.model.head_init] is None:
        return  # pretraining alone (ssl.rounds): no adapter to train
    encoder = encoder_for(cfg)
    vocabulary, counted = gather_vocabulary(grid, cfg) if needs_word_count(cfg) else ((), {})
    vocabulary_summary = {"vocabulary": counted} if counted else {}
    folder, checkpoint = start_folder(cfg, vocabulary)
    cfg = folder.cfg  # with a federated vocabulary, it names the run folder's vocabulary.txt
    model = None if is_multitask(cfg) else new_model(cfg)  # a multi-task run has a model per task
    kept = kept_at_sites(cfg, model) if model is not None else frozenset()
    initial = {k: v for k, v in trainable_state(model).items() if k not in kept} if model is not None else {}
    if checkpoint is not None:
        initial = checkpoint.arrays
    done_rounds = checkpoint.server_round if checkpoint is not None else 0
    groups = None
    if is_multitask(cfg):
        groups, initial, by_task = start_groups(grid, cfg, folder)
        vocabulary_summary = {"vocabulary": by_task} if by_task else {}  # each captioning group's count
    if cfg.personalization.mode == "fedper":
        log.info("personalization.mode=fedper: each site keeps its own output layer, so there is no global model "
                 "to score on the server's test set; the sites' validation metrics are the result")
    broadcast = gather_broadcast(grid, cfg, folder)
    instructions = ConfigRecord({**site_instructions(cfg), **site_state_instructions(cfg, folder),
                                 **broadcast.to_config()})
    if groups is not None:
        round_end = RoundEnd(MultiTaskEvaluator(cfg, groups), folder, done_rounds)
        strategy: Strategy = multitask_strategy(cfg, folder, groups)
    else:
        round_end = RoundEnd(CentralEvaluator(cfg, broadcast), folder, done_rounds)
        strategy = build_strategy(cfg, folder, done_rounds=done_rounds)
    if checkpoint is not None:
        restore_strategy_state(strategy, checkpoint.strategy_state)
    round_end.strategy = strategy
    closed_form: dict[str, Any] = {}
    if HEAD_INITS[cfg.model.head_init] is not None and checkpoint is None:
        if groups is not None:
            initial, closed_form = closed_form_tasks(grid, cfg, groups, initial, instructions, folder,
                                                     broadcast=broadcast, feature_width=encoder.num_features)
        elif model is not None:
            solved, closed_form = closed_form_phase(grid, cfg, broadcast.apply(model), instructions, folder,
                                                    feature_width=encoder.num_features)
            initial = {k: v for k, v in solved.items() if k not in kept}
        evaluate_round_zero(grid, strategy, initial, instructions, cfg.strategy.round_timeout)
        round_end.record(0, initial)
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
            **closed_form,
            **vocabulary_summary,
        },
    )
    final, where = (summary["final"], "test") if summary["final"] else (summary["final-federated-val"], "site validation")
    scores = ", ".join(f"{name} {final.get(name, float('nan')):.3f}" for name in folder.headline_metrics)
    log.info("Finished %d rounds in %.0f s: %s %s (%s, weights: %s, %s). Results: %s", summary["rounds"],
             summary["wall-seconds"], where, scores, cfg.model.encoder, cfg.model.weights or "random init",
             cfg.model.adapter, folder.path)
