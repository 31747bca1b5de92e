"""Which site a ClientApp plays, and with which configuration, in simulation and in deployment.

In simulation a node is a partition of one pooled dataset (``partition-id``). A deployed
SuperNode is started by ``omnirad-client`` with the site's own paths in its node config; the
server's run configuration says what to train, the node config says where this site's data,
encoder weights and feature cache are. Nothing here leaves the site.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ConfigRecord, Context
from flwr.app.user_config import UserConfig

from omnirad.captions import vocabulary_copy
from omnirad.config import Config, ConfigError, ModelConfig
from omnirad.configure import load_config
from omnirad.data.sources.files import DEPLOYMENT
from omnirad.encoders import weights_fingerprint
from omnirad.multitask import TaskMismatch, declared_spec, site_view, task_config, trained_task
from omnirad.multitask_check import DECLARED
from omnirad.plan import RunPlan, SiteSettings
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


class EncoderMismatch(RuntimeError):
    """The site's encoder weights are not the ones the server trains with."""


def site_plan(context: Context) -> tuple[RunPlan, int]:
    """The run's plan as this site runs it (the federation's size in simulation; the site's own
    paths and device in deployment), and its site number."""
    plan = RunPlan.of(load_config(context.run_config))
    node = context.node_config
    if NODE_DATA_FILE not in node:  # simulation: data.num-sites unset (0) is the federation's size
        return plan.in_federation(int(node["num-partitions"])), int(node["partition-id"])
    if plan.given.data.dataset != DEPLOYMENT:
        raise ConfigError(f"this site was started by omnirad-client with its own data file, but the server's run has "
                          f"data.dataset={plan.given.data.dataset!r}; a deployed federation needs data.dataset='deployment'")
    # the site's own device and precision, never the server's
    site = SiteSettings(data_file=str(node[NODE_DATA_FILE]), encoder_weights=str(node[NODE_WEIGHTS]),
                        cache_dir=str(node[NODE_CACHE_DIR]), device=str(node.get(NODE_DEVICE, "auto")),
                        precision=str(node.get(NODE_PRECISION, "auto")))
    return plan.at_site(site), int(node[NODE_SITE_ID])


def task_view(plan: RunPlan, site_id: int, node: UserConfig) -> Config:
    """The configuration this site trains with: its own task's in a multi-task run (in deployment
    the task its site file declares), else the run's."""
    cfg = plan.config
    if plan.site is None:
        return site_view(cfg, site_id)
    declared = cfg.multitask.site_tasks == DECLARED
    if declared != (NODE_TASK_NAME in node):
        raise ConfigError("the server runs a multi-task federation: name this site's task in its site file "
                          "(data.task-name)" if declared else
                          f"this site declares task '{node[NODE_TASK_NAME]}' (data.task-name), but the server's run "
                          "is single-task: remove data.task-name or run with multitask.site-tasks='declared'")
    if not declared:
        return cfg
    return task_config(cfg, str(node[NODE_TASK_NAME]), declared_spec(str(node[NODE_TASK_KIND]), int(node[NODE_NUM_CLASSES])))


def task_name(plan: RunPlan, site_id: int, node: UserConfig) -> str:
    """The task this site trains in a multi-task run (its ``multitask.site-tasks`` entry in
    simulation, the task its site file declares in deployment); empty in a single-task run or for a
    site that sits this run out. A fact about the site, not a configuration key."""
    if plan.site is not None:
        return str(node.get(NODE_TASK_NAME, ""))
    return trained_task(plan.given.multitask, site_id)


def site_of(context: Context) -> tuple[Config, int]:
    """The configuration this site works with before any message's instructions, and its site number."""
    plan, site_id = site_plan(context)
    return task_view(plan, site_id, context.node_config), site_id


def message_plan(plan: RunPlan, instructions: ConfigRecord) -> RunPlan:
    """The plan with what the server's adapter messages say the run has learnt:

    - after federated SSL pretraining (``ssl.rounds``), in simulation, the messages name the
      pretrained encoder file, on the same disk: the site loads it instead of ``model.weights``. A
      deployed site keeps the file its operator configured; the fingerprint check refuses it until
      that is the federation's pretrained file;
    - a captioning site without the run's vocabulary file (a federated vocabulary, or any deployed
      site) reads its captions with the words the messages carry, kept in its cache folder under a
      name made from them (the server sends words only to captioning sites).
    """
    pretrained = str(instructions.get(PRETRAINED_ENCODER, ""))
    if pretrained and plan.site is None:
        plan = plan.with_encoder(pretrained)
    words = instructions.get(VOCABULARY)
    if not plan.vocabulary and isinstance(words, list) and words:
        folder = Path(plan.site.cache_dir if plan.site is not None else plan.given.model.cache_dir).expanduser()
        plan = plan.with_vocabulary(str(vocabulary_copy([str(word) for word in words], folder)))
    return plan


def check_task(trained: str, instructions: ConfigRecord) -> None:
    """Refuse an adapter meant for another task than the one this site trains (``trained``:
    ``task_name``; multi-task runs)."""
    sent = str(instructions.get(TASK, ""))
    if sent != trained:
        raise TaskMismatch(f"the server sent the adapter of task '{sent or 'none'}', this site trains "
                           f"'{trained or 'the run task'}'")


def check_encoder(model: ModelConfig, instructions: ConfigRecord) -> None:
    """Refuse to train or evaluate when the server's encoder weights differ from this site's:
    adapters trained on other features would be averaged into nonsense."""
    expected = str(instructions.get(ENCODER_FINGERPRINT, ""))
    if not expected:
        return
    local = weights_fingerprint(model.weights)
    if local != expected:
        # no path in the message: it goes back to the server
        raise EncoderMismatch(
            f"the server's encoder weights are {expected[:24]}, this site's {local[:24]}: install the federation's "
            "weights file and set encoder.weights in the site configuration"
        )
