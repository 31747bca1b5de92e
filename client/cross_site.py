"""A site's part in cross-site evaluation (``run.cross-site``, ``omnirad_fl.server.cross_site``).

After the last round the server asks each site for its own final model: the tensors it kept
(``personalization.mode``: its FedPer output layer, its FedBN norms) and, with
``personalization.finetune-epochs``, its locally fine-tuned copy of the final model (the same
fine-tuning, with the same seed, as its last evaluation's ``finetuned-*`` metrics). These leave the
site for the evaluation only. Then the server sends every model to every site, which scores each
on its validation split and answers with scalar metrics; no image, feature or label leaves it.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from omnirad.adapters import trainable_state
from omnirad.broadcast import Broadcast
from omnirad.metrics import wire_keys
from omnirad.protocol import (
    ARRAYS,
    CONFIG,
    CROSS_SITE_FINETUNED,
    CROSS_SITE_MODEL_PREFIX,
    METRICS,
    QUERY_CROSS_SITE_MODEL,
    QUERY_CROSS_SITE_SCORE,
    SITE_ID,
)
from omnirad.site import RoundInputs
from omnirad.training import evaluate_model
from omnirad_fl.client.rounds import round_inputs, run_state, site_for
from omnirad_fl.client.site_handlers import site_handler


@site_handler("query", QUERY_CROSS_SITE_MODEL)
def own_model(msg: Message, context: Context) -> Message:
    """This site's final model: its kept tensors after the last round and, with
    ``personalization.finetune-epochs``, the final model fine-tuned on its training split."""
    cfg, site = site_for(msg, context)
    inputs = round_inputs(msg, run_state(cfg.privacy, site, msg, context), training=False)
    content = RecordDict({ARRAYS: ArrayRecord(dict(inputs.personal or {})),
                          METRICS: MetricRecord({SITE_ID: float(site.site_id)})})
    if cfg.personalization.finetune_epochs > 0:
        model = site.model_for(inputs)
        site.train(model, cfg.num_server_rounds + 1, epochs=cfg.personalization.finetune_epochs)
        content[CROSS_SITE_FINETUNED] = ArrayRecord(dict(trainable_state(model)))
    return Message(content=content, reply_to=msg)


@site_handler("query", QUERY_CROSS_SITE_SCORE)
def score_models(msg: Message, context: Context) -> Message:
    """Each model sent (its whole trainable state, or the shared tensors alone for the global
    model, whose kept tensors stay at their common initial values) scored on this site's
    validation split: scalar metrics per model."""
    cfg, site = site_for(msg, context)
    broadcast = Broadcast.from_config(msg.content[CONFIG])
    content = RecordDict({METRICS: MetricRecord({SITE_ID: float(site.site_id)})})
    for key in [k for k in msg.content if k.startswith(CROSS_SITE_MODEL_PREFIX)]:
        state = msg.content[key].to_torch_state_dict()
        model = site.model_for(RoundInputs(state=state, server_round=cfg.num_server_rounds, broadcast=broadcast))
        scores = evaluate_model(model, site.val_set.inputs, site.val_set.labels, site.task, placement=site.placement,
                                volumes=site.val_set.data.volumes, volume_score=cfg.data.volume_score)
        content[key] = MetricRecord({k: float(v) for k, v in wire_keys(scores).items()})
    return Message(content=content, reply_to=msg)
