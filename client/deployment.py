"""Which site a ClientApp plays, and with which configuration, in simulation and in deployment.

In simulation a node is a partition of one pooled dataset (``partition-id``). A deployed
SuperNode is started by ``omnirad-client`` with the site's own paths in its node config; the
server's run configuration says what to train, the node config says where this site's data,
encoder weights and feature cache are. Nothing here leaves the site.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context

from omnirad.config import DEPLOYMENT, Config, ConfigError, load_config, to_flat
from omnirad.encoders import ENCODER_FINGERPRINT_KEY, weights_fingerprint

# Node-config keys that omnirad-client sets on a deployed SuperNode.
SITE_ID, SITE_NAME, DATA_FILE, WEIGHTS, CACHE_DIR = "site-id", "site-name", "data-file", "model-weights", "cache-dir"


class EncoderMismatch(RuntimeError):
    """The site's encoder weights are not the ones the server trains with."""


def site_of(context: Context) -> tuple[Config, int]:
    """The configuration this site trains with and its site number."""
    cfg = load_config(context.run_config)
    node = context.node_config
    if DATA_FILE not in node:
        return cfg, int(node["partition-id"])
    if cfg.data.dataset != DEPLOYMENT:
        raise ConfigError(f"this site was started by omnirad-client with its own data file, but the server's run has "
                          f"data.dataset={cfg.data.dataset!r}; a deployed federation needs data.dataset='deployment'")
    local = {"data.site-files": str(node[DATA_FILE]), "model.weights": str(node[WEIGHTS]),
             "model.cache-dir": str(node[CACHE_DIR])}
    return load_config({**to_flat(cfg), **local}), int(node[SITE_ID])


def check_encoder(cfg: Config, instructions: ConfigRecord) -> None:
    """Refuse to train or evaluate when the server's encoder weights differ from this site's:
    adapters trained on other features would be averaged into nonsense."""
    expected = str(instructions.get(ENCODER_FINGERPRINT_KEY, ""))
    if not expected:
        return
    local = weights_fingerprint(cfg.model.weights)
    if local != expected:
        raise EncoderMismatch(
            f"the server's encoder weights are {expected[:24]}, this site's ({cfg.model.weights or 'random init'}) "
            f"{local[:24]}: install the federation's weights file and set encoder.weights in the site configuration"
        )


def with_pretrained_encoder(cfg: Config, instructions: ConfigRecord) -> Config:
    """In simulation, after federated SSL pretraining (``ssl.rounds``), the server's messages name
    the pretrained encoder file, on the same disk: the site loads it instead of ``model.weights``.
    A deployed site keeps the file its operator configured; the fingerprint check refuses it
    until that is the federation's pretrained file."""
    path = str(instructions.get("ssl-encoder", ""))
    if not path or cfg.data.dataset == DEPLOYMENT or path == cfg.model.weights:
        return cfg
    return load_config({**to_flat(cfg), "model.weights": path})
