"""A site's configuration file (``sites/NAME.yaml``) and the checks made before it connects.

Everything in it stays at the site: where its data, encoder weights, feature cache, CA
certificate and authentication key are. What to train comes from the server's run configuration.
Relative paths are read relative to the file, so a site folder can be moved as a whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from omnirad.config import ConfigError, flatten_keys
from omnirad.config.io import refuse_interpolation
from omnirad.credentials import ca_certificate_problems, site_key_problems
from omnirad.devices import check_device_syntax
from omnirad.encoders import ENCODERS
from omnirad.problems import Problems
from omnirad.tasks import KINDS as TASK_KINDS

ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")
TASK_NAME = re.compile(r"^(?!shared$)[A-Za-z][A-Za-z0-9_-]{0,63}$")  # 'shared' names the tensors all tasks share


@dataclass
class SiteIdentity:
    name: str = ""  # the site's name, as in omnirad-certs --site NAME=NAME.pub (its key is sites/NAME.key)
    id: int = -1  # the site's number in the federation, 0..N-1: seeds its training and labels its metrics


@dataclass
class ServerAccess:
    address: str = ""  # the SuperLink as host:port
    ca_certificate: str = ""  # the federation's ca.crt, to verify the server
    insecure: bool = False  # no TLS: only for a test on one machine


@dataclass
class SiteData:
    file: str = ""  # MedMNIST-format .npz, MedSegBench .npz for segmentation, a labels CSV or a class-folder tree
    task: str = "multi-class"  # what the file holds: a MedMNIST task kind, or segmentation
    num_classes: int = 0  # classes (labels for multi-label; pixel classes with background for segmentation)
    task_name: str = ""  # a multi-task federation: the task this site trains, shared with the sites that train it


@dataclass
class SiteEncoder:
    name: str = "omnirad-small"
    weights: str = ""  # local weights file; empty only for a test federation with a random encoder
    sha256: str = ""  # the federation's encoder fingerprint: `sha256sum` of the weights file


@dataclass
class SiteConfig:
    site: SiteIdentity = field(default_factory=SiteIdentity)
    server: ServerAccess = field(default_factory=ServerAccess)
    auth_key: str = ""  # this site's private authentication key (sites/NAME.key from omnirad-client --keygen)
    data: SiteData = field(default_factory=SiteData)
    encoder: SiteEncoder = field(default_factory=SiteEncoder)
    cache_dir: str = "~/.cache/omnirad-fl/features"  # encoder features kept between rounds
    state_dir: str = ""  # the SuperNode's own folder (installed app bundles); default ~/.omnirad-fl/sites/NAME
    site_state_dir: str = ""  # what the site keeps per run (DP ledger, personal tensors); default STATE-DIR/site-state
    runtime_port: int = 9094  # local port for the SuperNode's ClientApp API: one per SuperNode on a machine
    trusted_publishers: list[str] = field(default_factory=list)  # ssh-ed25519 keys (or .pub files) whose apps it runs
    device: str = "auto"  # where this site computes: auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps
    precision: str = "auto"  # auto (bf16 on a GPU with it, fp16 on other CUDA GPUs, fp32 elsewhere), fp32, bf16, fp16
    site_runtime: bool = True  # one long-lived process answers every message (false: a fresh process per message)
    site_cache_mib: int = 1024  # what the site runtime keeps in memory of the site's data and encoded features


def _snake(tree: object) -> object:
    """YAML keys are kebab-case like the run configuration's; the dataclasses are snake_case."""
    if isinstance(tree, dict):
        return {str(k).replace("-", "_"): _snake(v) for k, v in tree.items()}
    return tree


def load_site_config(path: Path) -> SiteConfig:
    """Read and type-check a site file; raises ``ConfigError`` naming the file and the key."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such site configuration file (write one from deploy/site-example.yaml)")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path))
        for key, value in flatten_keys(raw if isinstance(raw, dict) else {}).items():
            refuse_interpolation(key, value)
        merged = OmegaConf.merge(OmegaConf.structured(SiteConfig), _snake(raw or {}))
        cfg: SiteConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    except OmegaConfBaseException as err:
        key = str(getattr(err, "full_key", "") or "").replace("_", "-")
        raise ConfigError(f"{path}: bad key or value{f' {key!r}' if key else ''}: {err.msg}") from err
    except Exception as err:  # yaml's parse errors carry the line and column
        raise ConfigError(f"{path}: not a readable YAML file: {err}") from err
    base = path.parent
    cfg.state_dir = cfg.state_dir or f"~/.omnirad-fl/sites/{cfg.site.name or 'unnamed'}"
    cfg.site_state_dir = cfg.site_state_dir or str(Path(cfg.state_dir) / "site-state")
    cfg.trusted_publishers = [entry if entry.startswith("ssh-") else str((base / Path(entry).expanduser()).resolve())
                              for entry in cfg.trusted_publishers]
    for holder, attr in ((cfg.server, "ca_certificate"), (cfg, "auth_key"), (cfg.data, "file"),
                         (cfg.encoder, "weights"), (cfg, "cache_dir"), (cfg, "state_dir"), (cfg, "site_state_dir")):
        value = getattr(holder, attr)
        if value:
            setattr(holder, attr, str((base / Path(value).expanduser()).resolve()))
    return cfg


def problems(cfg: SiteConfig, source: Path) -> list[str]:
    """Everything wrong with a site's configuration that can be found without the server."""
    return [f"{source}: {message}" for message in keyed_problems(cfg)]


def keyed_problems(cfg: SiteConfig) -> Problems:
    """``problems``, each about its key, so that the checks of the keys that are fine still run."""
    found = Problems()

    def need(ok: bool, key: str, message: str) -> None:
        found.need(ok, f"{key}: {message}", about=key)

    need(bool(cfg.site.name), "site.name", "missing")
    need(cfg.site.id >= 0, "site.id", f"{cfg.site.id}: give each site a number from 0, distinct within the federation")
    need(bool(ADDRESS.match(cfg.server.address)), "server.address",
         f"{cfg.server.address!r}: expected host:port, e.g. fl.example-hospital.org:9092")
    if cfg.server.insecure:
        need(not cfg.server.ca_certificate, "server.ca-certificate", "set, but server.insecure=true turns TLS off")
    else:
        need(Path(cfg.server.ca_certificate).is_file() if cfg.server.ca_certificate else False,
             "server.ca-certificate", f"{cfg.server.ca_certificate or 'missing'}: the federation's ca.crt is needed "
             "to verify the server (or server.insecure: true for a local test)")
    need(Path(cfg.auth_key).is_file() if cfg.auth_key else False, "auth-key",
         f"{cfg.auth_key or 'missing'}: this site's private key, made at the site by "
         f"`omnirad-client --site {cfg.site.name or 'NAME'} --keygen` (sites/NAME.key)")
    need(cfg.encoder.name in ENCODERS, "encoder.name", f"{cfg.encoder.name!r}: one of {', '.join(ENCODERS)}")
    need(cfg.data.task in TASK_KINDS, "data.task", f"{cfg.data.task!r}: one of {', '.join(TASK_KINDS)}")
    need(not cfg.data.task_name or bool(TASK_NAME.match(cfg.data.task_name)), "data.task-name",
         f"{cfg.data.task_name!r}: letters, digits, '-' and '_', starting with a letter (e.g. chest-findings)")
    need(bool(cfg.data.file), "data.file", "missing: the site's .npz file, labels CSV or image folder")
    need(1 <= cfg.runtime_port <= 65535, "runtime-port", f"{cfg.runtime_port}: a TCP port")
    need(cfg.site_cache_mib >= 0, "site-cache-mib", f"{cfg.site_cache_mib}: MiB, 0 or more")
    try:
        check_device_syntax(cfg.device, cfg.precision)
    except ConfigError as err:
        found.add(str(err).replace("run.device", "device").replace("run.precision", "precision"), about="device")
    for key, value in (("data.file", cfg.data.file), ("encoder.weights", cfg.encoder.weights),
                       ("cache-dir", cfg.cache_dir), ("site-state-dir", cfg.site_state_dir), ("auth-key", cfg.auth_key)):
        need('"' not in value, key, "paths with double quotes cannot be passed to the SuperNode")
    if not cfg.server.insecure and cfg.server.ca_certificate and Path(cfg.server.ca_certificate).is_file():
        found.extend((f"server.ca-certificate: {p}" for p in ca_certificate_problems(Path(cfg.server.ca_certificate))),
                     about="server.ca-certificate")
    if cfg.auth_key and Path(cfg.auth_key).is_file():
        found.extend((f"auth-key: {p}" for p in site_key_problems(Path(cfg.auth_key), cfg.site.name)), about="auth-key")
    if cfg.encoder.weights:
        need(Path(cfg.encoder.weights).is_file(), "encoder.weights", f"{cfg.encoder.weights}: no such file")
    else:
        need(not cfg.encoder.sha256, "encoder.weights", "missing, but encoder.sha256 names the federation's weights")
    return found
