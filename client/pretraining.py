"""A site's answer in federated self-supervised pretraining (``ssl.rounds``)."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from omnirad.protocol import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, SERVER_ROUND, SSL_ROUNDS, TEACHER, TRAIN_SSL
from omnirad.seeds import ssl_site_seed
from omnirad.site_cache import get_site
from omnirad.ssl import SslRound, from_wire, site_round, to_wire
from omnirad_fl.client.deployment import site_of
from omnirad_fl.client.site_handlers import site_handler


@site_handler("train", TRAIN_SSL)
def pretrain_round(msg: Message, context: Context) -> Message:
    """One round of self-supervised pretraining on this site's unlabelled training images: the
    student goes back (float16 when ``ssl.half-precision``), with the images count and loss."""
    cfg, site_id = site_of(context)
    config = msg.content[CONFIG]
    site = get_site(cfg, site_id)
    teacher = msg.content[TEACHER].to_torch_state_dict() if TEACHER in msg.content else {}
    task = SslRound(ssl=cfg.ssl, encoder=cfg.model.encoder, image_size=cfg.data.size,
                    student=from_wire(msg.content[ARRAYS].to_torch_state_dict()), teacher=from_wire(teacher),
                    server_round=int(config[SERVER_ROUND]), rounds=int(config[SSL_ROUNDS]),
                    seed=ssl_site_seed(cfg.run.seed, site.site_id))
    student, metrics = site_round(task, site.train_set.data.images, placement=site.placement)
    metrics = {**metrics, NUM_EXAMPLES: len(site.train_set.data.images)}
    content = RecordDict({ARRAYS: ArrayRecord(to_wire(student, cfg.ssl.half_precision)), METRICS: MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
