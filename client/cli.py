"""``omnirad-client --site NAME``: check a site's set-up, then run its Flower SuperNode.

The checks run before anything connects, so an IT team sees every problem with paths, data,
weights and keys at once, with the file and key to fix, instead of a failure in round one.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from omnirad.app_trust import parse_trusted
from omnirad.captions import SPECIAL_TOKENS, build_vocabulary
from omnirad.config import ConfigError
from omnirad.data.caption_csv import captions_by_split
from omnirad.data.labelled import ReadOptions
from omnirad.data.npz import DataFileError
from omnirad.data.site_files import format_of
from omnirad.data.sources.files import file_task
from omnirad.devices import resolve_placement
from omnirad.encoders import create_encoder, weights_fingerprint
from omnirad.problems import Problems
from omnirad.protocol import (
    NODE_CACHE_DIR,
    NODE_DATA_FILE,
    NODE_DEVICE,
    NODE_NUM_CLASSES,
    NODE_PRECISION,
    NODE_SITE_ID,
    NODE_SITE_NAME,
    NODE_STATE_DIR,
    NODE_TASK_KIND,
    NODE_TASK_NAME,
    NODE_WEIGHTS,
)
from omnirad.tasks import CAPTIONING, MULTI_LABEL, SEGMENTATION, TaskSpec
from omnirad_fl.client import clientapp_relay as relay
from omnirad_fl.client.keys import write_site_keys
from omnirad_fl.client.runtime_channel import RUNTIME_ENV
from omnirad_fl.client.runtime_supervisor import parent_socket, private_socket
from omnirad_fl.client.site_config import SiteConfig, keyed_problems, load_site_config
from omnirad_fl.client.supernode import SUPEREXEC_POLL, SUPEREXEC_POLL_ENV
from omnirad_fl.client.verified_app import TRUSTED_ENV

CHECK_SIZE = 64  # image side the data check reads at (the run's data.size comes from the server)


def check_data(cfg: SiteConfig) -> str:
    """Read the site's data by its registered format as its declared task; raises
    ``DataFileError`` listing what is wrong. Reports images (slices) per split, what the format
    adds (volumes: patients and modalities; image folders: patients and stored image sizes) and,
    for classes, images per class."""
    path = Path(cfg.data.file)
    task = file_task(cfg.data.task, cfg.data.num_classes) if cfg.data.task != CAPTIONING else own_words(path)
    form = format_of(path)
    splits = form.read(path, task, ReadOptions(CHECK_SIZE))
    counts = ", ".join(f"{len(split.labels)} {name}" for name, split in splits.items())
    kind = "slices" if any(split.volumes is not None for split in splits.values()) else "images"
    what = f"{task.num_outputs - len(SPECIAL_TOKENS)} distinct words" if task.captioning else f"{cfg.data.num_classes} classes"
    line = f"{path.name}: {counts} {kind} ({cfg.data.task}, {what})"
    if form.survey is not None:
        line += f"; {form.survey(path, task)}"
    if cfg.data.task in (SEGMENTATION, MULTI_LABEL, CAPTIONING):
        return line
    per_class = np.bincount(np.concatenate([s.labels for s in splits.values()]), minlength=cfg.data.num_classes)
    return f"{line}; per class: {', '.join(f'{k}: {n}' for k, n in enumerate(per_class))}"


def own_words(path: Path) -> TaskSpec:
    """A caption file checked with its own words as vocabulary: every row and image is read; the
    run's vocabulary is counted with the other sites before round 1, and nothing here leaves."""
    return TaskSpec(CAPTIONING, build_vocabulary(c for split in captions_by_split(path).values() for c in split))


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


def check_device(cfg: SiteConfig) -> str:
    """The site's device and precision exist on this machine (a GPU named in the site file, say)."""
    try:
        placement = resolve_placement(cfg.device, cfg.precision)
    except ConfigError as err:
        raise ValueError(str(err).replace("run.device", "device").replace("run.precision", "precision")) from err
    return f"computes on {placement.describe()} (device: {cfg.device}, precision: {cfg.precision})"


def trusted_keys(cfg: SiteConfig) -> list[str]:
    """The site's trusted publisher keys as OpenSSH lines (entries are lines or .pub files)."""
    return [entry if entry.startswith("ssh-") else Path(entry).read_text().strip() for entry in cfg.trusted_publishers]


def check_trust(cfg: SiteConfig) -> str:
    """The publishers whose app bundles this site runs; a warning when it trusts none."""
    if not cfg.trusted_publishers:
        return "app bundles are NOT verified (no trusted-publishers in the site file): any app the server ships runs"
    keys = parse_trusted(trusted_keys(cfg))
    return f"runs only app bundles signed by {len(keys)} trusted publisher key(s)"


def relay_script() -> str:
    """The per-message ``flwr-clientapp`` of a site with a runtime: the relay to its warm clientapp
    parent, in isolated mode without site-packages (it needs the standard library alone); one
    shebang argument, as Linux passes the rest of the line as one."""
    return f"#!{sys.executable} -IS\nimport runpy\n\nrunpy.run_path({str(Path(relay.__file__))!r}, run_name='__main__')\n"


def install_clientapp(cfg: SiteConfig, runtime_socket: Path | None) -> dict[str, str]:
    """Put the site's ``flwr-clientapp`` first on the SuperNode's PATH: it verifies bundles against
    the site's trusted keys (if it has any) and forwards messages to the site runtime (if it runs
    one); returns the environment entries the SuperNode needs."""
    folder = Path(cfg.state_dir) / "trust"
    (folder / "bin").mkdir(parents=True, exist_ok=True)
    program = folder / "bin" / "flwr-clientapp"
    if runtime_socket is None:
        program.write_text(f"#!{sys.executable}\nfrom omnirad_fl.client.verified_app import main\n\nmain()\n")
    else:
        program.write_text(relay_script())
    program.chmod(0o755)
    env = {"PATH": os.pathsep.join([str(program.parent), os.environ.get("PATH", "")])}
    if cfg.trusted_publishers:
        keys = folder / "trusted-publishers"
        keys.write_text("\n".join(trusted_keys(cfg)) + "\n")
        env[TRUSTED_ENV] = str(keys)
    if runtime_socket is not None:
        env[RUNTIME_ENV] = str(runtime_socket)
        env[relay.ZYGOTE_ENV] = str(parent_socket(runtime_socket))
        env[relay.PYTHON_ENV] = sys.executable
    return env


def check_keys(cfg: SiteConfig) -> str:
    try:
        key = load_ssh_private_key(Path(cfg.auth_key).read_bytes(), None)
    except (ValueError, TypeError) as err:
        raise ValueError(f"auth-key: {cfg.auth_key} is not an OpenSSH private key ({err})") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"auth-key: {cfg.auth_key} is not an elliptic-curve key (Flower needs a NIST curve)")
    if cfg.server.insecure:
        return f"authentication key {Path(cfg.auth_key).name} (unused: server.insecure turns TLS and site authentication OFF)"
    try:
        x509.load_pem_x509_certificate(Path(cfg.server.ca_certificate).read_bytes())
    except ValueError as err:
        raise ValueError(f"server.ca-certificate: {cfg.server.ca_certificate} is not a PEM certificate") from err
    return f"authentication key {Path(cfg.auth_key).name}, CA {Path(cfg.server.ca_certificate).name}"


# The site file's keys each check reads: a check runs unless one of its keys already has a problem
# (then that problem is the report), so a missing auth-key or server.address hides nothing else.
CHECK_NEEDS: dict[str, tuple[str, ...]] = {
    "check_data": ("data.file", "data.task", "data.task-name"),
    "check_encoder_weights": ("encoder.name", "encoder.weights"),
    "check_device": ("device",),
    "check_keys": ("auth-key", "server.ca-certificate"),
    "check_trust": ("trusted-publishers",),
}


def preflight(cfg: SiteConfig, source: Path) -> list[str]:
    """Run every check; returns what passed, raises ``ConfigError`` listing all that failed: the
    site file's problems and those of every check whose keys are fine, together."""
    keyed = keyed_problems(cfg)
    failed = Problems()
    failed.extend(f"{source}: {message}" for message in keyed)
    broken = keyed.about()
    passed = []
    for check in (check_data, check_encoder_weights, check_device, check_keys, check_trust):
        if broken & set(CHECK_NEEDS[check.__name__]):
            continue
        try:
            passed.append(check(cfg))
        except Exception as err:  # noqa: BLE001 - every failed check is reported, with its file, not a traceback
            failed.add(f"{source}: {err}" if isinstance(err, DataFileError | ValueError | OSError | RuntimeError)
                       else f"{source}: {check.__name__.removeprefix('check_')}: {type(err).__name__}: {err}")
    failed.raise_if_any(ConfigError)
    return passed


def supernode_command(cfg: SiteConfig) -> list[str]:
    """The command line of this site's Flower SuperNode: Flower's ``flower-supernode``, launched by
    ``omnirad_fl.client.supernode`` so that it waits less between messages while a run is under way."""
    node_config = (f'{NODE_SITE_ID}={cfg.site.id} {NODE_SITE_NAME}="{cfg.site.name}" {NODE_DATA_FILE}="{cfg.data.file}" '
                   f'{NODE_WEIGHTS}="{cfg.encoder.weights}" {NODE_CACHE_DIR}="{cfg.cache_dir}" '
                   f'{NODE_STATE_DIR}="{cfg.site_state_dir}" '
                   f'{NODE_DEVICE}="{cfg.device}" {NODE_PRECISION}="{cfg.precision}"')
    if cfg.data.task_name:  # a multi-task federation: this site's declaration
        node_config += (f' {NODE_TASK_NAME}="{cfg.data.task_name}" {NODE_TASK_KIND}="{cfg.data.task}" '
                        f'{NODE_NUM_CLASSES}={cfg.data.num_classes}')
    command = [sys.executable, "-m", "omnirad_fl.client.supernode", "--superlink", cfg.server.address, "--node-config", node_config, "--port",
               str(cfg.runtime_port)]
    if cfg.server.insecure:  # Flower authenticates a SuperNode over TLS only (it exits with 303 otherwise)
        return [*command, "--insecure"]
    return [*command, "--auth-supernode-private-key", cfg.auth_key, "--root-certificates", cfg.server.ca_certificate]


def keygen(cfg: SiteConfig, source: Path) -> int:
    """Make the site's key pair where its file says (``auth-key``), or beside the file; print the
    public key for the coordinator. The private key never leaves this machine."""
    private = Path(cfg.auth_key) if cfg.auth_key else source.parent / f"{cfg.site.name}.key"
    try:
        public = write_site_keys(private, cfg.site.name)
    except FileExistsError as err:
        print(f"omnirad-client: {err}", file=sys.stderr)
        return 2
    print(public.read_text().strip())
    print(f"wrote {private} (private: stays here) and {public}. Send {public.name} to the coordinator, who registers "
          f"it with: omnirad-certs CERTS --site {cfg.site.name}={public.name}", file=sys.stderr)
    if not cfg.auth_key:
        print(f"set auth-key: {private.name} in {source}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="omnirad-client",
        description="Check this site's set-up (paths, data, encoder weights, keys), then start its Flower "
                    "SuperNode, which trains the federation's adapters on the local data. Images, labels and "
                    "features never leave the site; only adapter weights and scalar metrics do.",
        epilog="The site file (YAML, paths relative to it) holds site.name, site.id, server.address, "
               "server.ca-certificate, auth-key, data.file/task/num-classes, encoder.name/weights/sha256, "
               "cache-dir, site-state-dir, runtime-port, site-runtime and site-cache-mib; see deploy/site-example.yaml and the README's deployment section. "
               "Exit status: 2 when a check fails, otherwise the SuperNode's.",
    )
    parser.add_argument("--site", required=True, metavar="NAME", help="this site's name, e.g. A")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="the site file (default: sites/NAME.yaml in the current folder)")
    parser.add_argument("--check", action="store_true", help="run the checks and exit without connecting")
    parser.add_argument("--no-runtime", action="store_true",
                        help="no site runtime: Flower starts a fresh ClientApp process (the whole stack) for every "
                             "message, as site-runtime: false does; for comparison")
    parser.add_argument("--keygen", action="store_true",
                        help="make this site's authentication key pair (at auth-key, or NAME.key next to the site "
                             "file), print the public key to send to the coordinator, and exit")
    args = parser.parse_args(argv)
    source = args.config or Path("sites") / f"{args.site}.yaml"
    try:
        cfg = load_site_config(source)
        if cfg.site.name != args.site:
            raise ConfigError(f"{source}: site.name is {cfg.site.name!r}, not {args.site!r}: wrong file for this site")
        if args.keygen:
            return keygen(cfg, source)
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
    os.environ[SUPEREXEC_POLL_ENV] = SUPEREXEC_POLL  # how often its SuperExec looks for a message to start a ClientApp for
    if args.no_runtime or not cfg.site_runtime:
        shim = install_clientapp(cfg, None) if cfg.trusted_publishers else {}
        os.execve(command[0], command, {**os.environ, "FLWR_HOME": cfg.state_dir, **shim})  # its PID is now the SuperNode's
    socket = private_socket(cfg.site.name)
    print(f"site {cfg.site.name}: its runtime answers every message on {socket}", flush=True)
    supervisor = [sys.executable, "-m", "omnirad_fl.client.runtime_supervisor", "--socket", str(socket),
                  "--cache-mib", str(cfg.site_cache_mib), "--", *command]
    env = {**os.environ, "FLWR_HOME": cfg.state_dir, **install_clientapp(cfg, socket)}
    os.execve(sys.executable, supervisor, env)  # checks done: a small process keeps the runtime and the SuperNode


if __name__ == "__main__":
    raise SystemExit(main())
