"""``omnirad-server``: the federation's SuperLink and its run, in one command.

Starts ``flower-superlink`` with TLS and SuperNode authentication (neither with ``--insecure``:
Flower authenticates SuperNodes over TLS only) and a persistent state database, registers every
site key that ``omnirad-certs`` wrote, submits the
run with ``flwr run`` and stops the SuperLink, and everything it started, when the run ends.
``--resume`` goes on from the last checkpoint of the newest run folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omnirad.config import Config, ConfigError, flat_defaults, parse_overrides, read_config_file, toml_literal
from omnirad.credentials import server_credential_problems, shared_site_keys
from omnirad.data.sources.files import DEPLOYMENT
from omnirad.logs import show_progress
from omnirad_fl.server.app_bundle import PUBLISHER_KEY, load_publisher_key, write_signed_app
from omnirad_fl.server.certs import CA_CERT, SERVER_CERT, SERVER_KEY, SITES_DIR
from omnirad_fl.server.checkpoint import MARK, check_same_run, load_checkpoint
from omnirad_fl.server.fleet_gate import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_BUFFERED_MIB,
    DEFAULT_MAX_REQUEST_MIB,
    GateSettings,
    ThreadedServer,
    fleet_gate,
    option_problems,
)
from omnirad_fl.server.processes import free_loopback_port, stop_process_tree, wait_until_healthy
from omnirad_fl.server.run_config import load_run_config
from omnirad_fl.server.run_folder import newest_summary

log = logging.getLogger(__name__)
CONNECTION = "omnirad"  # the flwr CLI's name for this SuperLink in <state-dir>/flwr/config.toml
PROJECT = Path(__file__).resolve().parents[1]  # the Flower app: this repository (pip install -e)


PATH_KEYS = ("run.output-dir", "run.resume-from", "data.test-file", "model.weights", "model.cache-dir")
FILE_KEYS = ("data.test-file", "model.weights")


def run_configuration(config_file: Path | None, overrides: Sequence[str], output_dir: Path,
                      resume: bool) -> dict[str, Any]:
    """The run's flat configuration, validated before anything starts. Relative paths are made
    absolute here (the ServerApp runs in the SuperLink's folder, not the user's) and files checked."""
    flat = read_config_file(config_file) if config_file else {}
    flat.update(parse_overrides(overrides))
    flat.setdefault("data.dataset", DEPLOYMENT)
    flat.setdefault("run.output-dir", str(output_dir))
    for key in PATH_KEYS:
        value = str(flat.get(key, ""))
        if value and value != "hub" and not value.startswith("hf_hub:"):
            flat[key] = str(Path(value).expanduser().resolve())
            if key in FILE_KEYS and not Path(flat[key]).is_file():
                raise ConfigError(f"{key}: {flat[key]}: no such file")
    cfg = load_run_config(flat)
    if cfg.data.dataset != DEPLOYMENT:
        raise ConfigError(f"data.dataset={cfg.data.dataset!r}: a deployed federation trains on each site's own "
                          "file (data.dataset='deployment'); use `flwr run .` or omnirad-sim for simulations")
    if resume:
        flat["run.resume-from"] = str(latest_checkpointed_run(Path(cfg.run.output_dir).expanduser()))
        load_run_config(flat)
    if flat.get("run.resume-from"):
        check_resumable(Path(str(flat["run.resume-from"])).expanduser().resolve(), load_run_config(flat))
    return flat


def check_resumable(folder: Path, cfg: Config) -> None:
    """The run a resumed run goes on from, checked here as the ServerApp will check it (the
    configuration against the run's; the checkpoint's mark, files, SHA-256s and fit to the run's
    model), so that a mismatch stops the server before it starts the SuperLink and waits out
    strategy.join-timeout for the sites."""
    if not folder.is_dir():
        raise ConfigError(f"run.resume-from={folder}: no such run folder")
    check_same_run(folder, cfg)
    try:
        load_checkpoint(folder)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from err


def latest_checkpointed_run(output_dir: Path) -> Path:
    """The newest run folder with a checkpoint, for ``--resume``."""
    folders = sorted((p.parent for p in output_dir.glob(f"*/{MARK}")), key=lambda p: p.stat().st_mtime)
    if not folders:
        raise ConfigError(f"--resume: no run folder with a checkpoint ({MARK}) under {output_dir}")
    return folders[-1]


def write_run_config(flat: dict[str, Any], path: Path) -> Path:
    """The run configuration as the TOML file ``flwr run --run-config`` reads (keys as in pyproject)."""
    known = flat_defaults()
    path.write_text("".join(f"{key} = {toml_literal(flat[key])}\n" for key in known if key in flat))
    return path


def tls_files(certs: Path) -> dict[str, Path]:
    """The SuperLink's CA, certificate and key; a missing one is refused with the command that makes it."""
    files = {"ca": certs / CA_CERT, "cert": certs / SERVER_CERT, "key": certs / SERVER_KEY}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise ConfigError(f"TLS files missing: {', '.join(missing)}; create them with `omnirad-certs "
                          f"{shlex.quote(str(certs))}` (add --site NAME=NAME.pub for each site's public key, from "
                          "`omnirad-client --site NAME --keygen`), or pass --insecure for a local test")
    return files


def check_credentials(certs: Path, *, tls: bool) -> None:
    """Refuse to start with credentials that would fail later, at the sites: a certificate not
    valid today, not the CA's or not its key's (with TLS), and sites registered with one key."""
    found = []
    if tls:
        files = tls_files(certs)
        found += server_credential_problems(files["ca"], files["cert"], files["key"])
    found += shared_site_keys({path.stem: path for path in (certs / SITES_DIR).glob("*.pub")})
    if found:
        raise ConfigError("\n  ".join(["the federation's credentials are not usable:", *found]))


def write_flwr_connection(flwr_home: Path, address: str, ca: Path | None) -> None:
    """The flwr CLI's connection to this SuperLink (used to register sites and submit the run)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    security = f'root-certificates = "{ca.resolve()}"' if ca else "insecure = true"
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{address}"\n{security}\n'
    )


class SuperLink:
    """``flower-superlink`` as a child process that we stop, with all it started, by PID; it
    listens on ``host:port`` (127.0.0.1 behind the fleet gate)."""

    def __init__(self, args: argparse.Namespace, state_dir: Path, env: dict[str, str], host: str, port: int) -> None:
        self.args, self.state_dir, self.env, self.host, self.port = args, state_dir, env, host, port
        self.log_file = state_dir / "superlink.log"
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        command = [flower_command("flower-superlink"),
                   "--host", self.host, "--port", str(self.port),
                   "--database", str(self.state_dir / "superlink.db"),
                   "--isolation", "subprocess", "--disable-runtime-dependency-installation",
                   "--log-file", str(self.log_file)]
        if self.args.insecure:  # Flower refuses SuperNode authentication without TLS (exit 104)
            return [*command, "--insecure"]
        tls = tls_files(self.args.certs)
        return [*command, "--enable-supernode-auth", "--ssl-ca-certfile", str(tls["ca"]), "--ssl-certfile",
                str(tls["cert"]), "--ssl-keyfile", str(tls["key"])]

    def start(self, timeout: float = 60.0) -> None:
        with (self.state_dir / "superlink.out").open("ab") as output:  # what fails before the log file opens
            self.process = subprocess.Popen(self.command(), cwd=self.state_dir, env=self.env,
                                            stdout=output, stderr=subprocess.STDOUT)
        wait_until_healthy(self.process, self.healthy, timeout, f"{self.state_dir / 'superlink.out'} and {self.log_file}")

    def healthy(self) -> bool:
        scheme = "http" if self.args.insecure else "https"
        context = None
        if not self.args.insecure:
            context = ssl.create_default_context(cafile=str(self.args.certs / CA_CERT))
            context.check_hostname = False  # the chain is verified; the name is the one the sites dial
        try:
            with urllib.request.urlopen(f"{scheme}://{self.address}/health", timeout=1, context=context) as r:
                return r.status == 200
        except OSError:
            return False

    @property
    def address(self) -> str:
        """Where this machine's own flwr calls reach the SuperLink."""
        return f"{'127.0.0.1' if self.host in ('0.0.0.0', '::') else self.host}:{self.port}"

    def stop(self) -> None:
        if self.process is not None:
            stop_process_tree(self.process.pid)
            self.process = None


def start_link(args: argparse.Namespace, state_dir: Path, env: dict[str, str]) -> tuple[SuperLink, ThreadedServer | None]:
    """The SuperLink, and unless ``--expose-control-api`` the fleet gate in front of it: the
    SuperLink then listens on 127.0.0.1 only and the public address serves the Fleet API alone."""
    if args.expose_control_api:
        superlink = SuperLink(args, state_dir, env, args.host, args.port)
        superlink.start()
        log.warning("omnirad-server: --expose-control-api: anyone who reaches %s:%d can submit runs (Flower's "
                    "open-source Control API has no account authentication); firewall it to the coordinator",
                    args.host, args.port)
        return superlink, None
    superlink = SuperLink(args, state_dir, env, "127.0.0.1", free_loopback_port())
    superlink.start()
    limits = {"max_request_bytes": args.max_request_mib << 20, "max_buffered_bytes": args.max_buffered_mib << 20,
              "header_timeout": args.header_timeout, "body_timeout": args.body_timeout}
    try:
        if args.insecure:
            settings = GateSettings(args.host, args.port, f"http://{superlink.address}", **limits)
        else:
            tls = tls_files(args.certs)
            settings = GateSettings(args.host, args.port, f"https://{superlink.address}", certfile=tls["cert"],
                                    keyfile=tls["key"], ca_certfile=tls["ca"], **limits)
        gate = fleet_gate(settings)
        gate.start()
    except BaseException:
        superlink.stop()
        raise
    log.info("fleet gate on %s:%d: the sites' API only, requests up to %d MiB; the Control API on %s (this machine)",
             args.host, args.port, args.max_request_mib, superlink.address)
    return superlink, gate


def register_sites(certs: Path, env: dict[str, str]) -> list[str]:
    """Register every site's public key; a key registered before (persistent state) is fine."""
    flwr = flower_command("flwr")
    registered = []
    for public_key in sorted((certs / SITES_DIR).glob("*.pub")):
        result = subprocess.run([flwr, "supernode", "register", str(public_key), CONNECTION, "--name", public_key.stem,
                                 "--format", "json"], env=env, capture_output=True, text=True)
        try:
            reply = json.loads(result.stdout)
        except json.JSONDecodeError:
            reply = {"success": False, "error-message": (result.stdout + result.stderr).strip()}
        if not reply.get("success") and "already in use" not in reply.get("error-message", ""):
            raise RuntimeError(f"could not register {public_key}: {reply.get('error-message')}")
        registered.append(public_key.stem)
    return registered


def finished_run(flat: dict[str, Any], started: float) -> Path | None:
    """The run folder whose summary.json was written since ``started`` (the resumed folder, or a
    new one), or None when the run did not finish."""
    if flat.get("run.resume-from"):
        summary = Path(flat["run.resume-from"]) / "summary.json"
        return summary.parent if summary.is_file() and summary.stat().st_mtime >= started else None
    summary = newest_summary(Path(str(flat["run.output-dir"])), started)
    return summary.parent if summary is not None else None


def flower_command(name: str) -> str:
    """A Flower executable: next to this Python (the venv), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found next to {sys.executable} or on PATH: is flwr installed here?")
    return found


def app_folder(args: argparse.Namespace, state_dir: Path) -> Path:
    """The app to submit: signed in ``state-dir/app`` when a publisher key is there, else the project."""
    key_path = args.sign_with or args.certs / PUBLISHER_KEY
    if not key_path.is_file():
        if args.sign_with:
            raise RuntimeError(f"--sign-with {key_path}: no such file")
        log.warning("omnirad-server: the app is NOT signed (no %s): sites that trust a publisher will refuse it",
                    key_path)
        return PROJECT
    key, publisher = load_publisher_key(key_path)
    folder = write_signed_app(PROJECT, state_dir / "app", key, publisher)
    log.info("app signed by %s (%s)", publisher, key_path.with_suffix(".pub").name)
    return folder


def check_options(args: argparse.Namespace) -> None:
    """The command line's numbers, before anything starts (a limit of 0 would refuse every site)."""
    problems = option_problems(max_request_mib=args.max_request_mib, max_buffered_mib=args.max_buffered_mib,
                               header_timeout=args.header_timeout, body_timeout=args.body_timeout, port=args.port)
    if problems:
        raise ConfigError("\n  ".join(["options not usable:", *problems]))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="omnirad-server",
        description="Start the federation's SuperLink (TLS, SuperNode authentication, persistent state), register "
                    "the sites' keys, run the federation and stop the SuperLink when the run ends.",
        epilog="Sites join with `omnirad-client --site NAME`. Results go to <state-dir>/runs/<run>/ (metrics.jsonl, "
               "summary.json, checkpoints). See the README's deployment section.",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="configuration overrides, e.g. num-server-rounds=20")
    parser.add_argument("--config", type=Path, metavar="FILE", help="the run's configuration (YAML, keys as in pyproject.toml)")
    parser.add_argument("--certs", type=Path, default=Path("certs"), help="folder from omnirad-certs (default: certs)")
    parser.add_argument("--insecure", action="store_true",
                        help="no TLS and no site authentication (a local test only: traffic is unencrypted)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    parser.add_argument("--port", type=int, default=9092, help="port for sites and the flwr CLI (default: 9092)")
    parser.add_argument("--state-dir", type=Path, default=Path("omnirad-server"),
                        help="SuperLink database, logs and run folders (default: omnirad-server)")
    parser.add_argument("--resume", action="store_true", help="go on from the newest run folder's last checkpoint")
    parser.add_argument("--max-request-mib", type=int, default=DEFAULT_MAX_REQUEST_MIB,
                        help="largest request a site may send, in MiB (default: %(default)s; Flower sends 5 MB chunks)")
    parser.add_argument("--max-buffered-mib", type=int, default=DEFAULT_MAX_BUFFERED_MIB,
                        help="request and answer bytes the gate holds at once, over all connections, in MiB; beyond it a request "
                             "is refused with 503 (default: %(default)s)")
    parser.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT_S, metavar="SECONDS",
                        help="a connection must send a request's headers within this time (default: %(default)s)")
    parser.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT_S, metavar="SECONDS",
                        help="the longest pause the gate waits for the next part of a request body "
                             "(default: %(default)s)")
    parser.add_argument("--expose-control-api", action="store_true",
                        help="serve Flower's Control API (flwr run/ls/stop) on the public port too; it has no "
                             "authentication in Flower's open-source package: firewall the port to the coordinator")
    parser.add_argument("--sign-with", type=Path, metavar="KEY",
                        help="sign the app with this Ed25519 key (default: CERTS/publisher.key when it exists); "
                             "sites that list its public key in trusted-publishers run only signed apps")
    return parser.parse_intermixed_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    show_progress()
    args = parse_args(argv)
    state_dir = args.state_dir.expanduser().resolve()
    args.certs = args.certs.expanduser().resolve()
    try:
        check_options(args)
        flat = run_configuration(args.config, args.overrides, state_dir / "runs", args.resume)
        check_credentials(args.certs, tls=not args.insecure)
    except ConfigError as err:
        log.error("omnirad-server: %s", err)
        return 2
    if args.insecure:
        log.warning("omnirad-server: WARNING: --insecure: TLS and site authentication are OFF: model updates "
                    "travel unencrypted and any SuperNode that reaches the port may join")
    state_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FLWR_HOME": str(state_dir / "flwr"), "FLWR_DISABLE_UPDATE_CHECK": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    run_config = write_run_config(flat, state_dir / "run-config.toml")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the SuperLink
    started = time.time()
    superlink: SuperLink | None = None
    gate: ThreadedServer | None = None
    try:
        superlink, gate = start_link(args, state_dir, env)
        write_flwr_connection(state_dir / "flwr", superlink.address, None if args.insecure else args.certs / CA_CERT)
        log.info("SuperLink on %s (%s, state %s)", superlink.address,
                 "INSECURE: no TLS, no site authentication" if args.insecure else "TLS, site authentication on",
                 state_dir / "superlink.db")
        sites = register_sites(args.certs, env)
        log.info("registered sites: %s", ", ".join(sites) or f"none (no keys under {args.certs / SITES_DIR})")
        submitted = subprocess.run([flower_command("flwr"), "run", str(app_folder(args, state_dir)), CONNECTION,
                                    "--stream", "--run-config", str(run_config)], env=env, check=False)
    except RuntimeError as err:
        log.error("omnirad-server: %s", err)
        return 1
    finally:
        if gate is not None:
            gate.stop()
        if superlink is not None:
            superlink.stop()
    folder = finished_run(flat, started)
    if folder is None or submitted.returncode != 0:
        log.error("omnirad-server: the run did not finish (no new summary.json; flwr run exited with %d); see %s",
                  submitted.returncode, state_dir / "superlink.log")
        return 1
    log.info("run finished: %s", folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
