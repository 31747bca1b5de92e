"""A deployed federation run as real processes on 127.0.0.1: ``omnirad-server`` (SuperLink with TLS,
site authentication, the fleet gate and a state database) and one ``omnirad-client`` SuperNode per
site, laid out as the README's deployment section does it. The end-to-end deployment tests and the
load test (``omnirad_fl.simulations.load_test``) drive it; every process is stopped by PID with
all it started, and a crash is a SIGKILL to the whole process tree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil
import yaml

from omnirad_fl.client.keys import write_site_keys
from omnirad_fl.server.app_bundle import write_publisher_key
from omnirad_fl.server.certs import write_federation
from omnirad_fl.server.processes import free_loopback_port, still_running, stop_process_tree
from omnirad_fl.simulations.deploy_demo import write_demo

BIN = Path(sys.executable).parent
T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, what: str, poll: float = 1.0) -> T:
    """``condition()``'s first truthy value; ``TimeoutError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class LocalFederation:
    """A demo federation in ``folder``: certificates, site files, data, and the processes it runs.
    ``overrides`` are run-configuration keys for ``omnirad-server`` (``_`` for ``-``); ``runtime``:
    whether each site answers through its site runtime (else a fresh process per message)."""

    def __init__(self, folder: Path, sites: list[str], rounds: int, tasks: tuple[str, ...] = (),
                 num_train: int = 300, runtime: bool = True, **overrides: object) -> None:
        self.folder, self.port, self.sites = folder, free_loopback_port(), list(sites)
        write_demo(folder, sites, f"127.0.0.1:{self.port}", size=32, rounds=rounds, num_train=num_train, tasks=tasks)
        # each site makes its key pair itself; the coordinator registers the public keys alone
        public = {name: write_site_keys(folder / "sites" / f"{name}.key", name) for name in sites}
        write_federation(folder / "certs", ["localhost", "127.0.0.1"], public)
        write_publisher_key(folder / "certs", "test-coordinator")  # omnirad-server signs the app with it
        for name in sites:  # a free local port for each SuperNode's ClientApp API; the app publisher it trusts
            path = folder / "sites" / f"{name}.yaml"
            site = yaml.safe_load(path.read_text())
            site["runtime-port"] = free_loopback_port()
            site["trusted-publishers"] = ["../certs/publisher.pub"]
            site["site-runtime"] = runtime
            path.write_text(yaml.safe_dump(site))
        self.overrides = [f"{key.replace('_', '-')}={value}" for key, value in overrides.items()]
        self.env = {**os.environ, "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
                    "HF_HUB_OFFLINE": "1", "FLWR_DISABLE_UPDATE_CHECK": "1"}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}  # the latest log of each process name
        self.stopped: list[int] = []

    def start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        self.logs[name] = self.folder / f"{name}-{len(list(self.folder.glob(f'{name}-*.log')))}.log"
        with self.logs[name].open("wb") as log:
            self.processes[name] = subprocess.Popen(command, cwd=self.folder, env=self.env, stdout=log,
                                                    stderr=subprocess.STDOUT)
        return self.processes[name]

    def log(self, name: str) -> str:
        path = self.logs.get(name)
        return path.read_text(errors="replace") if path and path.exists() else ""

    def start_server(self, state: str = "server", resume: bool = False) -> None:
        command = [str(BIN / "omnirad-server"), "--config", "federation.yaml", "--certs", "certs", "--host",
                   "127.0.0.1", "--port", str(self.port), "--state-dir", state, *self.overrides]
        self.start("server", command + (["--resume"] if resume else []))
        wait_for(lambda: "registered sites:" in self.log("server") or self.processes["server"].poll() is not None,
                 120, "the server to register the sites")
        if self.processes["server"].poll() is not None:
            raise RuntimeError(f"omnirad-server exited at start:\n{self.log('server')}")

    def start_site(self, name: str) -> subprocess.Popen[bytes]:
        return self.start(f"site-{name}", [str(BIN / "omnirad-client"), "--site", name])

    def run_folder(self, state: str = "server") -> Path | None:
        folders = list((self.folder / state / "runs").glob("*/config.yaml"))
        return folders[0].parent if folders else None

    def rounds_done(self, state: str = "server") -> int:
        """The last checkpointed round (0 before the first)."""
        folder = self.run_folder(state)
        mark = folder / "checkpoint.json" if folder else None
        return int(json.loads(mark.read_text())["round"]) if mark and mark.exists() else 0

    def running_clientapp(self, name: str) -> bool:
        """Whether site ``name`` is running a ClientApp (training or scoring) right now."""
        process = self.processes.get(f"site-{name}")
        if process is None or process.poll() is not None:
            return False
        try:
            return any("flwr-clientapp" in " ".join(child.cmdline())
                       for child in psutil.Process(process.pid).children(recursive=True))
        except psutil.Error:
            return False

    def kill_runtime(self, name: str) -> int:
        """SIGKILL site ``name``'s runtime alone (as the out-of-memory killer would); returns its PID."""
        site = psutil.Process(self.processes[f"site-{name}"].pid)
        runtime = next(p for p in site.children() if "omnirad_fl.client.runtime" in " ".join(p.cmdline()))
        runtime.kill()
        runtime.wait(10)
        return runtime.pid

    def rss_mb(self) -> dict[str, float]:
        """Resident memory of each running process name, with all it started, in MiB."""
        found = {}
        for name, process in self.processes.items():
            try:
                root = psutil.Process(process.pid)
                found[name] = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20
            except psutil.Error:
                continue
        return found

    def kill(self, name: str) -> None:
        """Kill a process and all it started at once (SIGKILL: no clean shutdown, as in a crash)."""
        root = psutil.Process(self.processes.pop(name).pid)
        tree = [root, *root.children(recursive=True)]
        for proc in tree:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(tree, timeout=10)
        self.stopped += [p.pid for p in tree]

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stopped += stop_process_tree(self.processes.pop(name).pid)

    def leftovers(self) -> list[int]:
        """Processes this federation stopped that are still alive (none, when cleanup worked)."""
        return still_running(self.stopped)
