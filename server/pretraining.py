"""The federated self-supervised pretraining phase (``ssl.rounds`` > 0), before the adapter rounds.

Each round the server sends the student (ViT + projection head or pixel decoder, with the DINO
centre) and, for DINO, the teacher in a ``train.ssl`` message; every site trains the student on
its own unlabelled images (``omnirad.ssl.site_round``) and sends it back. Flower's FedAvg samples
the sites and averages the students (and centres) weighted by images; the server then moves its
teacher towards the average by EMA (``omnirad.ssl.update_server_teacher``). At the end the
pretrained ViT is written as a plain timm safetensors file, and the run's configuration points
``model.weights`` at it, so the adapter phase in the same run (and its encoder fingerprint check)
uses it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from omnirad.adapters import tensor_bytes
from omnirad.closed_form import HEAD_INITS
from omnirad.config import Config, ConfigError
from omnirad.encoders import weights_fingerprint
from omnirad.protocol import PRETRAINED_ENCODER, SSL_ROUNDS, TEACHER, TRAIN_SSL
from omnirad.ssl import (
    DinoSettings,
    from_wire,
    initial_states,
    round_momentum,
    save_encoder,
    teacher_encoder,
    to_wire,
    update_server_teacher,
)
from omnirad_fl.server.phases import PHASES, ServerRun

log = logging.getLogger(__name__)


class SslFedAvg(FedAvg):
    """FedAvg whose train messages are ``train.ssl`` and carry the current teacher as well."""

    def __init__(self, teacher: ArrayRecord, **kwargs) -> None:
        super().__init__(fraction_evaluate=0.0, **kwargs)
        self.teacher = teacher

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        messages = []
        for message in super().configure_train(server_round, arrays, config, grid):
            content = RecordDict({**message.content, TEACHER: self.teacher})
            messages.append(Message(content=content, message_type=f"train.{TRAIN_SSL}", dst_node_id=message.metadata.dst_node_id))
        return messages


def default_encoder_path(cfg: Config) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(cfg.run.output_dir).expanduser() / f"ssl-encoder-{cfg.model.encoder}-{stamp}.safetensors"


def pretrain_encoder(grid: Grid, cfg: Config) -> str | None:
    """Run ``ssl.rounds`` of federated pretraining; returns the pretrained encoder file (None when
    ``ssl.rounds`` is 0)."""
    s = cfg.ssl
    if s.rounds == 0:
        return None
    if cfg.run.resume_from:
        raise ConfigError("run.resume-from with ssl.rounds > 0: the pretraining is not checkpointed; resume the "
                          "adapter phase with ssl.rounds=0 and model.weights set to the pretrained encoder file")
    student, teacher = initial_states(s.objective, cfg.model.encoder, weights=cfg.model.weights, image_size=cfg.data.size,
                                      seed=cfg.run.seed)
    path = Path(s.save_encoder).expanduser() if s.save_encoder else default_encoder_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    log_path = path.with_suffix(".jsonl")
    min_sites = cfg.strategy.min_sites or cfg.data.num_sites
    strategy = SslFedAvg(ArrayRecord(), fraction_train=cfg.strategy.fraction_train, min_train_nodes=min_sites,
                         min_available_nodes=min_sites)
    config = ConfigRecord({SSL_ROUNDS: s.rounds})
    log.info("SSL pretraining: %d rounds of %s on the sites' images (%s transfer); log %s", s.rounds, s.objective,
             "float16" if s.half_precision else "float32", log_path)
    with log_path.open("w") as round_log:
        for server_round in range(1, s.rounds + 1):
            started = time.perf_counter()
            sent_student, sent_teacher = to_wire(student, s.half_precision), to_wire(teacher, s.half_precision)
            strategy.teacher = ArrayRecord(sent_teacher)
            messages = list(strategy.configure_train(server_round, ArrayRecord(sent_student), config, grid))
            replies = list(grid.send_and_receive(messages, timeout=cfg.strategy.round_timeout))
            aggregated, metrics = strategy.aggregate_train(server_round, replies)
            if aggregated is None:
                raise RuntimeError(f"SSL round {server_round}: no site sent a valid reply; see the sites' logs")
            student = from_wire(aggregated.to_torch_state_dict())
            local_steps = float(metrics.get("steps", 1.0)) if metrics is not None else 1.0
            momentum = round_momentum(server_round, s.rounds, local_steps, DinoSettings().teacher_momentum)
            if teacher:
                teacher = update_server_teacher(teacher, student, momentum)
            answered = sum(1 for reply in replies if not reply.has_error())
            line = {
                "round": server_round, "sites": answered,
                **{k: float(v) for k, v in (metrics or {}).items()},
                "teacher-momentum": momentum if teacher else None,
                "bytes-down": len(messages) * tensor_bytes([*sent_student.values(), *sent_teacher.values()]),
                "bytes-up": answered * tensor_bytes(sent_student.values()),
                "bytes-down-float32": len(messages) * tensor_bytes([*student.values(), *teacher.values()]),
                "bytes-up-float32": answered * tensor_bytes(student.values()),
                "seconds": time.perf_counter() - started,
            }
            round_log.write(json.dumps(line) + "\n")
            round_log.flush()
            # sequential steps per site decide what the averaged encoder learns (docs/ssl.md): say them
            log.info("SSL round %d/%d: loss %.4f, %.0f steps per site (about %.0f in all at this pace), "
                     "%.1f MB down, %.1f MB up, %.0f s", server_round, s.rounds, line.get("loss", float("nan")),
                     local_steps, local_steps * s.rounds, line["bytes-down"] / 1e6, line["bytes-up"] / 1e6,
                     line["seconds"])
    save_encoder(teacher_encoder(teacher, student), str(path))
    log.info("SSL pretraining done: encoder %s (sha256 %s)", path, weights_fingerprint(str(path))[:16])
    return str(path)


@PHASES.register("pretrain", "pretrain", applies=lambda run: run.cfg.ssl.rounds > 0)
def pretrain(run: ServerRun) -> None:
    """The encoder the adapter phase uses is the pretrained one; pretraining alone ends the run."""
    pretrained = pretrain_encoder(run.grid, run.cfg)
    if pretrained is not None:
        run.plan = run.plan.with_encoder(pretrained)
    run.finished = run.cfg.num_server_rounds == 0 and HEAD_INITS[run.cfg.model.head_init] is None


def pretrained_instructions(cfg: Config) -> dict[str, str]:
    """Simulation: the adapter phase's messages name the pretrained file, which sites on the same
    disk load instead of their configured weights; deployed sites keep their own file (see docs)."""
    return {PRETRAINED_ENCODER: cfg.model.weights} if cfg.ssl.rounds > 0 else {}
