"""Run Flower simulations on this machine without surprises: project-local state, loopback only,
no run-time dependency installs, and a SuperLink whose PID we own and stop.

``flwr run`` would otherwise start a detached SuperLink that outlives the run, keeps the working
directory it was first started in, and installs each run's dependencies with uv.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from flwr.app import Message, Metadata, RecordDict

from omnirad import logs
from omnirad.errors import ConfigError
from omnirad_fl.server.processes import stop_process_tree, wait_until_healthy

DEFAULT_HTTP_PORT = 39091
DEFAULT_NUM_SUPERNODES = 4  # the project's federation (.flwr), and what its tools start when data.num-sites is 0
# Ray's own variable: ray.init() reads it, so Flower's simulation, whose Ray backend calls ray.init()
# without an address (Flower 1.42 passes no address through `options.backend.init-args`), attaches
# to that cluster instead of starting a Ray of its own.
RAY_ADDRESS_ENV = "RAY_ADDRESS"
# Ray on 127.0.0.1 only when 0 (the loopback Ray of a local simulation); refuses to join a cluster.
RAY_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ray_cluster_address(address: str, timeout: float = 5.0) -> str:
    """``address`` (``HOST:PORT`` of a running Ray head, the ``--port`` of ``ray start --head``),
    checked before anything starts: a simulation told to attach to a head that is not there would
    fail late, deep in Flower's log. Raises ``ConfigError`` naming the address."""
    host, _, port = address.strip().rpartition(":")
    if not host or not port.isdigit() or "/" in host:
        raise ConfigError(f"Ray address {address!r}: expected HOST:PORT of the Ray head (the --port of "
                          "`ray start --head`, 6379 by default), e.g. 10.0.0.5:6379")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise ConfigError(f"Ray address {address!r}: no Ray head answers there ({err}); start one with "
                          f"`ray start --head --port {port}` or give the head's address") from err
    return f"{host}:{port}"


def on_loopback(address: str) -> bool:
    """Whether ``address``'s host is this machine's loopback (a test cluster on 127.0.0.1)."""
    host = address.rpartition(":")[0].strip("[]")
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def cluster_gpus(address: str) -> float:
    """The GPUs of the Ray cluster at ``address``, asked of Ray by a driver process with the
    simulation's environment (this process stays free of Ray): the sites of an attached simulation
    run on the cluster's nodes, whose GPUs the launching machine need not have."""
    code = ("import sys, ray; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
            "print(ray.cluster_resources().get('GPU', 0.0))")
    env = ray_environment({**os.environ, RAY_ADDRESS_ENV: address})
    try:
        done = subprocess.run([sys.executable, "-c", code, address], env=env, capture_output=True, text=True,
                              timeout=120, check=False)
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"Ray address {address!r}: the cluster did not answer within 120 s") from err
    if done.returncode != 0:
        raise RuntimeError(f"Ray address {address!r}: could not read the cluster's resources: "
                           f"{done.stderr.strip()[-2000:]}")
    return float(done.stdout.split()[-1])


def ray_environment(env: dict[str, str]) -> dict[str, str]:
    """``env`` with Ray kept on 127.0.0.1, unless ``RAY_ADDRESS`` names a cluster on the network:
    then (checked first) Ray must name this machine by its network address, the one the cluster
    knows its nodes by, as a driver runs on a node of the cluster."""
    address = env.get(RAY_ADDRESS_ENV, "").strip()
    if address:
        env[RAY_ADDRESS_ENV] = ray_cluster_address(address)
    if not address or on_loopback(address):
        env[RAY_LOOPBACK_ENV] = "0"  # makes Ray bind 127.0.0.1 instead of the host's IP
    else:
        env.pop(RAY_LOOPBACK_ENV, None)
    return env


def flower_log(flwr_home: Path) -> Path:
    """Where the simulations of a SuperLink started here write Flower's full log (``omnirad.logs``)."""
    return flwr_home / "local-superlink" / "flower.log"


def flower_env(flwr_home: Path, http_port: int = DEFAULT_HTTP_PORT, verbose: bool = False) -> dict[str, str]:
    """Environment for flwr and flower-superlink: local state, offline, loopback, no installs, and
    a quiet terminal: Flower's log goes to ``flower_log`` and only its warnings to the terminal,
    unless ``verbose`` (``run.verbose``) or ``OMNIRAD_VERBOSE=1``. With ``RAY_ADDRESS`` set, the
    simulations attach to that Ray cluster (``ray_environment``)."""
    env = os.environ.copy()
    env[logs.FLOWER_LOG_ENV] = str(flower_log(flwr_home))
    if verbose or logs.verbose():
        env[logs.VERBOSE_ENV] = "1"
    else:
        # Flower's own switch, read by every flwr process on import: it also quiets what the
        # simulation logs before the ServerApp is imported (omnirad.logs quiets the rest).
        env.setdefault("FLWR_LOG_LEVEL", "WARNING")
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(http_port),
        FLWR_LOCAL_CONTROL_API_PORT=str(http_port + 2),
        RAY_USAGE_STATS_ENABLED="0",
        HF_HUB_OFFLINE="1",
        # flower-superlink starts flower-superexec and flwr-simulation by name.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    return ray_environment(env)


def write_flower_config(flwr_home: Path, num_supernodes: int = DEFAULT_NUM_SUPERNODES) -> Path:
    """Write ``$FLWR_HOME/config.toml`` with a local-simulation connection as the default.

    ``options.num-supernodes`` is the only way Flower 1.42 gives a connection a default size (it
    prints a deprecation note); ``flwr run --federation-config`` overrides it per run.
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(
        '[superlink]\ndefault = "local"\n\n'
        '[superlink.local]\naddress = ":local:"\n'
        f"options.num-supernodes = {num_supernodes}\n"
    )
    return path


def superlink_answers(http_port: int) -> bool:
    """Whether a SuperLink answers its health check on 127.0.0.1:``http_port``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=0.5) as r:
            status: int = r.status
            return status == 200
    except OSError:
        return False


class LocalSuperLink:
    """A simulation SuperLink on 127.0.0.1 that this process starts and stops, by PID."""

    def __init__(self, flwr_home: Path, workdir: Path, http_port: int = DEFAULT_HTTP_PORT,
                 verbose: bool = False) -> None:
        self.flwr_home = flwr_home
        self.workdir = workdir
        self.http_port = http_port
        self.env = flower_env(flwr_home, http_port, verbose)
        self.log_file = flwr_home / "local-superlink" / "superlink.log"
        self.flower_log = flower_log(flwr_home)
        self.process: subprocess.Popen | None = None
        self.started_pids: list[int] = []  # every process stop() ended, for tests to check

    def healthy(self) -> bool:
        return superlink_answers(self.http_port)

    def start(self, timeout: float = 60.0) -> LocalSuperLink:
        if self.healthy():
            raise RuntimeError(
                f"a SuperLink already answers on 127.0.0.1:{self.http_port}; stop it first "
                "(it may be one that `flwr run` left running)"
            )
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        command = [
            str(Path(sys.executable).with_name("flower-superlink")),
            "--insecure", "--simulation", "--isolation", "subprocess",
            "--host", "127.0.0.1", "--port", str(self.http_port),
            "--disable-runtime-dependency-installation",
            "--log-file", str(self.log_file),
        ]
        self.process = subprocess.Popen(
            command, cwd=self.workdir, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_until_healthy(self.process, self.healthy, timeout, str(self.log_file))
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the SuperLink and every process it started (SuperExec, ServerApp, Ray), by PID."""
        if self.process is None:
            return
        self.started_pids = stop_process_tree(self.process.pid)
        self.process.wait(timeout=5)
        self.process = None

    def __enter__(self) -> LocalSuperLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def flwr_run_command(project: Path, run_config: str = "", num_supernodes: int | None = None,
                     gpus_per_site: float = 0.0) -> list[str]:
    """``flwr run <project> --stream`` with these overrides and this many simulated sites, each
    given ``gpus_per_site`` of a GPU (Flower's backend resources; 0.25 puts four sites on one GPU)."""
    command = [str(Path(sys.executable).with_name("flwr")), "run", str(project), "--stream"]
    if run_config:
        command += ["--run-config", run_config]
    federation = [f"num-supernodes={num_supernodes}"] if num_supernodes is not None else []
    if gpus_per_site > 0:
        federation.append(f"client-resources-num-gpus={gpus_per_site:g}")
    if federation:
        command += ["--federation-config", " ".join(federation)]
    return command


def gpus_per_site(num_sites: int, device: str) -> float:
    """The share of a GPU each simulated site gets: the machine's GPUs (the Ray cluster's, where
    ``RAY_ADDRESS`` attaches the simulation to one) spread over the sites (at most one each),
    unless the run computes on the CPU. Ray hides every GPU from a ClientApp that asks for none, so
    without this the sites of a GPU workstation would train on its CPU."""
    import torch  # imported here: this module is also the light `make setup` helper

    if device == "cpu" or device == "mps":
        return 0.0
    address = os.environ.get(RAY_ADDRESS_ENV, "").strip()
    if address:
        gpus = cluster_gpus(address)
    else:
        gpus = float(torch.cuda.device_count()) if torch.cuda.is_available() else 0.0
    return min(1.0, gpus / max(1, num_sites))


def flwr_run(project: Path, env: dict[str, str], run_config: str = "", *, num_supernodes: int | None = None,
             gpus_per_site: float = 0.0,
             timeout: float = 1800.0) -> subprocess.CompletedProcess:
    """Run ``flwr_run_command`` with our environment; output goes to this terminal too."""
    return subprocess.run(flwr_run_command(project, run_config, num_supernodes, gpus_per_site), cwd=project, env=env,
                          timeout=timeout, check=False)


def instruction(message_type: str, content: RecordDict, node_id: int) -> Message:
    """A message as the SuperLink delivers it to a ClientApp (no SuperLink needed to build one)."""
    metadata = Metadata(run_id=1, message_id=f"{message_type}-{node_id}", src_node_id=0, dst_node_id=node_id,
                        reply_to_message_id="", group_id="1", created_at=time.time(), ttl=3600.0,
                        message_type=message_type)
    return Message(metadata=metadata, content=content)


def main(argv: list[str] | None = None) -> int:
    """`python -m omnirad_fl.simulations.flower_local write-config DIR` (used by make setup)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["write-config"])
    parser.add_argument("flwr_home", type=Path)
    args = parser.parse_args(argv)
    print(f"wrote {write_flower_config(args.flwr_home.resolve())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
