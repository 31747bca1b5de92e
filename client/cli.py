"""``omnirad-client --site NAME``: check a site's set-up, then run its Flower SuperNode.

The checks run before anything connects, so an IT team sees every problem with paths, data,
weights and keys at once, with the file and key to fix, instead of a failure in round one.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from omnirad.config import ConfigError
from omnirad.data.npz import DataFileError, read_classification_npz, read_segmentation_npz
from omnirad.data.sources.files import file_task
from omnirad.encoders import create_encoder, weights_fingerprint
from omnirad.protocol import (
    NODE_CACHE_DIR,
    NODE_DATA_FILE,
    NODE_NUM_CLASSES,
    NODE_SITE_ID,
    NODE_SITE_NAME,
    NODE_TASK_KIND,
    NODE_TASK_NAME,
    NODE_WEIGHTS,
)
from omnirad.tasks import SEGMENTATION
from omnirad_fl.client.site_config import SiteConfig, load_site_config, problems


def check_data(cfg: SiteConfig) -> str:
    """Read the site's file as its declared task; raises ``DataFileError`` naming what is wrong."""
    path = Path(cfg.data.file)
    if cfg.data.task == SEGMENTATION:
        splits = read_segmentation_npz(path, cfg.data.num_classes)
    else:
        splits = read_classification_npz(path, file_task(cfg.data.task, cfg.data.num_classes))
    counts = ", ".join(f"{len(split.labels)} {name}" for name, split in splits.items())
    return f"{path.name}: {counts} images ({cfg.data.task}, {cfg.data.num_classes} classes)"


def check_encoder_weights(cfg: SiteConfig) -> str:
    """The weights file is the federation's (SHA-256) and loads into the named encoder."""
    if not cfg.encoder.weights:
        return f"{cfg.encoder.name}: RANDOM init (no encoder.weights): for test federations only"
    if cfg.encoder.sha256:
        actual = weights_fingerprint(cfg.encoder.weights)
        if actual != cfg.encoder.sha256.strip().lower():
            raise ValueError(f"encoder.weights: {cfg.encoder.weights} has SHA-256 {actual}, but the federation "
                             f"expects {cfg.encoder.sha256} (encoder.sha256): a different or damaged file")
    create_encoder(cfg.encoder.name, cfg.encoder.weights)
    checked = "SHA-256 matches" if cfg.encoder.sha256 else "SHA-256 NOT checked (set encoder.sha256)"
    return f"{cfg.encoder.name} from {Path(cfg.encoder.weights).name}: loads, {checked}"


def check_keys(cfg: SiteConfig) -> str:
    try:
        key = load_ssh_private_key(Path(cfg.auth_key).read_bytes(), None)
    except (ValueError, TypeError) as err:
        raise ValueError(f"auth-key: {cfg.auth_key} is not an OpenSSH private key ({err})") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"auth-key: {cfg.auth_key} is not an elliptic-curve key (Flower needs a NIST curve)")
    if cfg.server.insecure:
        return f"authentication key {Path(cfg.auth_key).name}; TLS OFF (server.insecure)"
    try:
        x509.load_pem_x509_certificate(Path(cfg.server.ca_certificate).read_bytes())
    except ValueError as err:
        raise ValueError(f"server.ca-certificate: {cfg.server.ca_certificate} is not a PEM certificate") from err
    return f"authentication key {Path(cfg.auth_key).name}, CA {Path(cfg.server.ca_certificate).name}"


def preflight(cfg: SiteConfig, source: Path) -> list[str]:
    """Run every check; returns what passed, raises ``ConfigError`` listing all that failed."""
    found = problems(cfg, source)
    if found:
        raise ConfigError("\n".join(found))
    passed, failed = [], []
    for check in (check_data, check_encoder_weights, check_keys):
        try:
            passed.append(check(cfg))
        except Exception as err:  # noqa: BLE001 - every failed check is reported, with its file, not a traceback
            failed.append(f"{source}: {err}" if isinstance(err, DataFileError | ValueError | OSError | RuntimeError)
                          else f"{source}: {check.__name__.removeprefix('check_')}: {type(err).__name__}: {err}")
    if failed:
        raise ConfigError("\n".join(failed))
    return passed


def supernode_command(cfg: SiteConfig) -> list[str]:
    """The ``flower-supernode`` command line for this site."""
    executable = shutil.which("flower-supernode") or str(Path(sys.executable).with_name("flower-supernode"))
    node_config = (f'{NODE_SITE_ID}={cfg.site.id} {NODE_SITE_NAME}="{cfg.site.name}" {NODE_DATA_FILE}="{cfg.data.file}" '
                   f'{NODE_WEIGHTS}="{cfg.encoder.weights}" {NODE_CACHE_DIR}="{cfg.cache_dir}"')
    if cfg.data.task_name:  # a multi-task federation: this site's declaration
        node_config += (f' {NODE_TASK_NAME}="{cfg.data.task_name}" {NODE_TASK_KIND}="{cfg.data.task}" '
                        f'{NODE_NUM_CLASSES}={cfg.data.num_classes}')
    command = [executable, "--superlink", cfg.server.address, "--auth-supernode-private-key", cfg.auth_key,
               "--node-config", node_config, "--port", str(cfg.runtime_port)]
    command += ["--insecure"] if cfg.server.insecure else ["--root-certificates", cfg.server.ca_certificate]
    return command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="omnirad-client",
        description="Check this site's set-up (paths, data, encoder weights, keys), then start its Flower "
                    "SuperNode, which trains the federation's adapters on the local data. Images, labels and "
                    "features never leave the site; only adapter weights and scalar metrics do.",
        epilog="The site file (YAML, paths relative to it) holds site.name, site.id, server.address, "
               "server.ca-certificate, auth-key, data.file/task/num-classes, encoder.name/weights/sha256, "
               "cache-dir and runtime-port; see deploy/site-example.yaml and the README's deployment section. "
               "Exit status: 2 when a check fails, otherwise the SuperNode's.",
    )
    parser.add_argument("--site", required=True, metavar="NAME", help="this site's name, e.g. A")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="the site file (default: sites/NAME.yaml in the current folder)")
    parser.add_argument("--check", action="store_true", help="run the checks and exit without connecting")
    args = parser.parse_args(argv)
    source = args.config or Path("sites") / f"{args.site}.yaml"
    try:
        cfg = load_site_config(source)
        if cfg.site.name != args.site:
            raise ConfigError(f"{source}: site.name is {cfg.site.name!r}, not {args.site!r}: wrong file for this site")
        passed = preflight(cfg, source)
    except ConfigError as err:
        print(f"omnirad-client: site {args.site} is not ready:\n{err}", file=sys.stderr)
        return 2
    for line in passed:
        print(f"ok  {line}", flush=True)
    if args.check:
        return 0
    command = supernode_command(cfg)
    print(f"site {cfg.site.name} (id {cfg.site.id}) connects to {cfg.server.address}: {shlex.join(command)}", flush=True)
    # A SuperNode installs each run's app bundle under FLWR_HOME: one folder per site, so that several
    # SuperNodes on one machine do not install into the same place at once.
    Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
    os.execve(command[0], command, {**os.environ, "FLWR_HOME": cfg.state_dir})  # its PID is now the SuperNode's


if __name__ == "__main__":
    raise SystemExit(main())
