"""The phases every adapter run has: who takes part, the run folder, the model, the instructions
sent with every round, the strategy, the rounds and the summary. Features add theirs in their own
modules (``omnirad_fl.server.phases``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from omnirad.adapters import tensor_bytes, trainable_state
from omnirad.config import FEDERATION_SIZE, Config, ConfigError
from omnirad.data.report import partition_report
from omnirad.data.sites import partition_class_names, partition_labels, pooled_train, site_partitions
from omnirad.data.sources import source_of
from omnirad.encoders import weights_fingerprint
from omnirad.evaluation import CentralEvaluator
from omnirad.models import encoder_for, kept_at_sites, new_model
from omnirad.multitask import is_multitask
from omnirad.protocol import ENCODER_FINGERPRINT, RUN_KEY, SIMULATION_STATE_DIR
from omnirad_fl.server.checkpoint import Checkpoint, check_same_run, load_checkpoint, restore_strategy_state
from omnirad_fl.server.phases import PHASES, ServerRun
from omnirad_fl.server.pretraining import pretrained_instructions
from omnirad_fl.server.round_end import RoundEnd
from omnirad_fl.server.run_folder import RunFolder, shipped_scores
from omnirad_fl.server.vocabulary import vocabulary_instructions
from omnirad_fl.strategies import build_strategy

log = logging.getLogger(__name__)


def check_federation(grid: Grid, cfg: Config) -> int:
    """The federation's size. Fails before any training when the simulated federation does not
    match a given data.num-sites; in deployment, waits up to ``strategy.join-timeout`` for every
    site to connect (sites come online when their IT teams start them: the strategy then waits for
    at least ``strategy.min-sites``)."""
    if source_of(cfg.data.dataset).deployed:
        connected = wait_for_sites(grid, cfg.data.num_sites, cfg.strategy.join_timeout)
        if connected < cfg.data.num_sites:
            log.warning("WARNING: only %d of %d sites connected within strategy.join-timeout=%.0f s; the run "
                        "starts once strategy.min-sites are there", connected, cfg.data.num_sites,
                        cfg.strategy.join_timeout)
        return cfg.data.num_sites
    num_nodes = len(list(grid.get_node_ids()))
    if cfg.data.num_sites == FEDERATION_SIZE:
        log.info("data.num-sites=%d: the federation's size", num_nodes)
        return num_nodes
    if num_nodes != cfg.data.num_sites:
        raise ConfigError(
            f"data.num-sites={cfg.data.num_sites} but the federation has {num_nodes} SuperNodes: run "
            f"`flwr run . --federation-config \"num-supernodes={cfg.data.num_sites}\"` or set "
            f"data.num-sites={num_nodes}"
        )
    return num_nodes


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


@PHASES.register("resume-check", "federation", applies=lambda run: bool(run.cfg.run.resume_from))
def check_resume_first(run: ServerRun) -> None:
    """A resumed run's configuration is checked against the run's before the server waits for
    sites (a deployed federation can take minutes to join): a mismatch fails at once, naming the
    keys. ``resumable`` checks again, with the federation's size known, when the folder opens."""
    resume_folder(run.cfg)


@PHASES.register("federation", "federation")
def federation(run: ServerRun) -> None:
    run.plan = run.plan.in_federation(check_federation(run.grid, run.cfg))


def resumable(cfg: Config) -> tuple[Path, Checkpoint]:
    """The run folder and checkpoint to go on from, once the configuration is the run's (beyond the
    keys a resumed run may change). What the sites keep (personal tensors, privacy accounts) is in
    their state stores, under the run's key, which the reopened folder keeps."""
    folder = resume_folder(cfg)
    return folder, load_checkpoint(folder)


def resume_folder(cfg: Config) -> Path:
    """``run.resume-from``'s folder, once the configuration is the run's (``check_same_run``)."""
    folder = Path(cfg.run.resume_from).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"run.resume-from={cfg.run.resume_from!r}: no such run folder")
    check_same_run(folder, cfg)
    return folder


@PHASES.register("folder", "folder")
def start_folder(run: ServerRun) -> None:
    """A new run folder (with the split described, for a simulated one, and a federated vocabulary
    kept), or the stopped run's with its checkpoint."""
    cfg = run.cfg
    if cfg.run.resume_from:
        resume_folder, run.checkpoint = resumable(cfg)
        run.folder = RunFolder.reopen(cfg, resume_folder, run.checkpoint.server_round)
        log.info("OmniRad-FL resumes %s after round %d", run.folder.path, run.checkpoint.server_round)
    else:
        run.folder = RunFolder.create(cfg, run.vocabulary)
        log.info("OmniRad-FL run folder: %s", run.folder.path)
        if not source_of(cfg.data.dataset).natural_split:  # a simulated split of a pool: the server can describe it
            labels = partition_labels(pooled_train(cfg.data))
            run.folder.write_partition(partition_report(labels, site_partitions(cfg.data, seed=cfg.run.seed), partition_class_names(cfg.data)))
    if run.folder.cfg.data.vocabulary != cfg.data.vocabulary:  # a federated vocabulary, kept in the run folder
        run.plan = run.plan.with_vocabulary(run.folder.cfg.data.vocabulary)
    run.encoder = encoder_for(run.cfg)


@PHASES.register("model", "model", applies=lambda run: not is_multitask(run.cfg.multitask))
def single_model(run: ServerRun) -> None:
    """The adapter every site trains, and the tensors of it the server sends (not the personal ones)."""
    run.model = new_model(run.cfg)
    run.kept = kept_at_sites(run.cfg, run.model)
    run.initial = {k: v for k, v in trainable_state(run.model).items() if k not in run.kept}
    if run.checkpoint is not None:
        run.initial = run.checkpoint.arrays
    if run.cfg.personalization.mode == "fedper":
        log.info("personalization.mode=fedper: each site keeps its own output layer, so there is no global model "
                 "to score on the server's test set; the sites' validation metrics are the result")


@PHASES.register("instructions", "instructions")
def instructions(run: ServerRun) -> None:
    """What every train and evaluate message carries besides the adapter: the fingerprint of the
    server's encoder weights (SHA-256 of the file, or random-init), which a deployed site compares
    with its own before it trains; a pretrained encoder's and a captioning run's vocabulary; where
    the sites keep their state for this run (a file named by the run's key, in each site's own
    folder in deployment, in the run folder in simulation: the sites share the server's disk); and
    what the gathering phases broadcast."""
    cfg, folder = run.cfg, run.need_folder()
    where = {} if source_of(cfg.data.dataset).deployed else {SIMULATION_STATE_DIR: str(folder.path / "site-state")}
    run.instructions = {ENCODER_FINGERPRINT: weights_fingerprint(cfg.model.weights), **pretrained_instructions(cfg),
                        **vocabulary_instructions(cfg), RUN_KEY: folder.run_key, **where,
                        **run.broadcast.to_config()}


@PHASES.register("strategy", "strategy", applies=lambda run: not is_multitask(run.cfg.multitask))
def single_strategy(run: ServerRun) -> None:
    folder = run.need_folder()
    run.round_end = RoundEnd(CentralEvaluator(run.cfg, run.broadcast), folder, run.done_rounds)
    run.strategy = build_strategy(run.cfg, folder, done_rounds=run.done_rounds)
    if run.checkpoint is not None:
        restore_strategy_state(run.strategy, run.checkpoint.strategy_state)
    run.round_end.strategy = run.strategy


@PHASES.register("rounds", "rounds")
def rounds(run: ServerRun) -> None:
    """The federated rounds; with none to run (a closed-form head alone, a finished run resumed)
    the final adapter is the one the run starts from."""
    num_rounds = max(0, run.cfg.num_server_rounds - run.done_rounds)
    if num_rounds == 0:
        run.final = run.initial
        return
    result = run.need_strategy().start(
        grid=run.grid,
        initial_arrays=ArrayRecord(run.initial),
        num_rounds=num_rounds,
        timeout=run.cfg.strategy.round_timeout,
        train_config=ConfigRecord(run.instructions),
        evaluate_config=ConfigRecord(run.instructions),
        evaluate_fn=run.round_end,
    )
    run.final = result.arrays.to_torch_state_dict() if result.arrays is not None else run.initial


@PHASES.register("finish", "finish")
def finish(run: ServerRun) -> None:
    """summary.json, and the run's result in one line."""
    cfg, folder = run.cfg, run.need_folder()
    local_bytes = tensor_bytes(t for k, t in run.model.named_parameters() if k in run.kept) if run.model else 0
    summary = folder.finish(
        run.final if run.final is not None else run.initial,
        {
            **({"resumed-after-round": run.done_rounds} if run.done_rounds else {}),
            "encoder": cfg.model.encoder,
            "weights": cfg.model.weights or "random init",
            "adapter": cfg.model.adapter,
            "personalization": cfg.personalization.mode,
            "adapter-parameter-bytes": tensor_bytes(run.initial.values()),
            "local-parameter-bytes": local_bytes,
            "encoder-parameter-bytes": tensor_bytes(run.need_encoder().parameters()),
            "num-sites": cfg.data.num_sites,
            "standardise-features": run.broadcast.standardisation is not None,
            **run.summary,
        },
    )
    log.info("Finished %d rounds in %.0f s; the run %s (%s, weights: %s, %s). Results: %s", summary["rounds"],
             summary["wall-seconds"], shipped_scores(summary, folder.headline_metrics), cfg.model.encoder,
             cfg.model.weights or "random init", cfg.model.adapter, folder.path)
