"""Which site a ClientApp plays, and with which configuration, in simulation and in deployment.

In simulation a node is a partition of one pooled dataset (``partition-id``). A deployed
SuperNode is started by ``omnirad-client`` with the site's own paths in its node config; the
server's run configuration says what to train, the node config says where this site's data,
encoder weights and feature cache are. Nothing here leaves the site.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ConfigRecord, Context

from omnirad.captions import vocabulary_copy
from omnirad.config import Config, ConfigError, to_flat, with_num_sites
from omnirad.configure import load_config
from omnirad.data.sources.files import DEPLOYMENT
from omnirad.encoders import weights_fingerprint
from omnirad.multitask import TaskMismatch, declared_spec, site_view, task_config
from omnirad.multitask_check import DECLARED
from omnirad.protocol import (
    ENCODER_FINGERPRINT,
    NODE_CACHE_DIR,
    NODE_DATA_FILE,
    NODE_DEVICE,
    NODE_NUM_CLASSES,
    NODE_PRECISION,
    NODE_SITE_ID,
    NODE_TASK_KIND,
    NODE_TASK_NAME,
    NODE_WEIGHTS,
    PRETRAINED_ENCODER,
    TASK,
    VOCABULARY,
)
from omnirad.tasks import CAPTIONING


class EncoderMismatch(RuntimeError):
    """The site's encoder weights are not the ones the server trains with."""


def site_of(context: Context) -> tuple[Config, int]:
    """The configuration this site trains with and its site number."""
    cfg = load_config(context.run_config)
    node = context.node_config
    if NODE_DATA_FILE not in node:  # simulation: data.num-sites unset (0) is the federation's size
        site_id = int(node["partition-id"])
        return site_view(with_num_sites(cfg, int(node["num-partitions"])), site_id), site_id
    if cfg.data.dataset != DEPLOYMENT:
        raise ConfigError(f"this site was started by omnirad-client with its own data file, but the server's run has "
                          f"data.dataset={cfg.data.dataset!r}; a deployed federation needs data.dataset='deployment'")
    local = {"data.site-files": str(node[NODE_DATA_FILE]), "model.weights": str(node[NODE_WEIGHTS]),
             "model.cache-dir": str(node[NODE_CACHE_DIR]),
             "data.vocabulary": "",  # a path on the server's disk: the site takes the run's words from its messages
             # the site's own device and precision, never the server's
             "run.device": str(node.get(NODE_DEVICE, "auto")), "run.precision": str(node.get(NODE_PRECISION, "auto"))}
    site_cfg = load_config({**to_flat(cfg), **local})
    declared = cfg.multitask.site_tasks == DECLARED
    if declared != (NODE_TASK_NAME in node):
        raise ConfigError("the server runs a multi-task federation: name this site's task in its site file "
                          "(data.task-name)" if declared else
                          f"this site declares task '{node[NODE_TASK_NAME]}' (data.task-name), but the server's run "
                          "is single-task: remove data.task-name or run with multitask.site-tasks='declared'")
    if declared:
        spec = declared_spec(str(node[NODE_TASK_KIND]), int(node[NODE_NUM_CLASSES]))
        site_cfg = task_config(site_cfg, str(node[NODE_TASK_NAME]), spec)
    return site_cfg, int(node[NODE_SITE_ID])


def check_task(cfg: Config, instructions: ConfigRecord) -> None:
    """Refuse an adapter meant for another task than this site's (multi-task runs)."""
    sent = str(instructions.get(TASK, ""))
    if sent != cfg.multitask.task:
        raise TaskMismatch(f"the server sent the adapter of task '{sent or 'none'}', this site trains "
                           f"'{cfg.multitask.task or 'the run task'}'")


def check_encoder(cfg: Config, instructions: ConfigRecord) -> None:
    """Refuse to train or evaluate when the server's encoder weights differ from this site's:
    adapters trained on other features would be averaged into nonsense."""
    expected = str(instructions.get(ENCODER_FINGERPRINT, ""))
    if not expected:
        return
    local = weights_fingerprint(cfg.model.weights)
    if local != expected:
        # no path in the message: it goes back to the server
        raise EncoderMismatch(
            f"the server's encoder weights are {expected[:24]}, this site's {local[:24]}: install the federation's "
            "weights file and set encoder.weights in the site configuration"
        )


def with_pretrained_encoder(cfg: Config, instructions: ConfigRecord) -> Config:
    """In simulation, after federated SSL pretraining (``ssl.rounds``), the server's messages name
    the pretrained encoder file, on the same disk: the site loads it instead of ``model.weights``.
    A deployed site keeps the file its operator configured; the fingerprint check refuses it
    until that is the federation's pretrained file."""
    path = str(instructions.get(PRETRAINED_ENCODER, ""))
    if not path or cfg.data.dataset == DEPLOYMENT or path == cfg.model.weights:
        return cfg
    return load_config({**to_flat(cfg), "model.weights": path})


def with_shared_vocabulary(cfg: Config, instructions: ConfigRecord) -> Config:
    """A captioning site without the run's vocabulary file (a federated vocabulary, or any deployed
    site) reads its captions with the words the server's messages carry, kept in its cache folder
    under a name made from them."""
    words = instructions.get(VOCABULARY)
    if cfg.data.task != CAPTIONING or cfg.data.vocabulary or not isinstance(words, list) or not words:
        return cfg
    path = vocabulary_copy([str(word) for word in words], Path(cfg.model.cache_dir).expanduser())
    return load_config({**to_flat(cfg), "data.vocabulary": str(path)})
