"""How ``omnirad-client`` keeps a site's runtime (``omnirad_fl.client.runtime``) beside its
SuperNode: started first and waited for, started again whenever it dies (killed, out of memory),
stopped by PID with the SuperNode. A message that arrives while it starts again waits for it in
the per-message proxy (``runtime_proxy.WAIT_SECONDS``); the site's state is on disk, so nothing
is lost.

``omnirad-client`` runs its checks (which import PyTorch), then replaces itself with
``python -m omnirad_fl.client.runtime_supervisor``: this module imports the standard library
alone, so the process that stays up beside the runtime and the SuperNode holds a few MiB, not 1 GiB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

READY_SECONDS = 600.0  # a first start imports the whole stack: 14 s alone, minutes beside 20 sites on 2 cores
RESTART_PAUSE = 1.0  # a runtime stopped together with omnirad-client (one signal to the tree) is not restarted
STOP_GRACE = 10.0


def listening(path: Path) -> bool:
    """Whether a runtime accepts connections on ``path`` now."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate ``process`` by its PID; kill it if it is still there after the grace period."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def private_socket(site: str) -> Path:
    """A socket path in a new folder only this user may open (``tempfile.mkdtemp``: mode 0700), in
    the system's temporary folder so that the path stays under the 107 bytes a socket path may have."""
    return Path(tempfile.mkdtemp(prefix=f"omnirad-fl-{site}-")) / "runtime.sock"


class SiteRuntimeProcess:
    """The runtime process of one site, serving ``socket`` (in a folder of its own, which
    ``close`` removes)."""

    name = "site runtime"

    def __init__(self, socket: Path, cache_mib: int) -> None:
        self.socket, self.folder = socket, socket.parent
        self.command = [sys.executable, "-m", "omnirad_fl.client.runtime", "--socket", str(self.socket),
                        "--cache-mib", str(cache_mib)]
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        self.process = subprocess.Popen(self.command)

    def wait_ready(self, stopping: threading.Event) -> bool:
        """Wait until it listens; False if it exits first or we are told to stop; ``TimeoutError``."""
        waited = 0.0
        while not listening(self.socket):
            if stopping.is_set() or (self.process is not None and self.process.poll() is not None):
                return False
            if waited >= READY_SECONDS:
                raise TimeoutError(f"the site runtime did not start in {READY_SECONDS:.0f} s")
            stopping.wait(0.5)
            waited += 0.5
        return True

    def exit_status(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def close(self) -> None:
        if self.process is not None:
            stop(self.process)
        shutil.rmtree(self.folder, ignore_errors=True)


class ClientAppParent(SiteRuntimeProcess):
    """The site's warm parent of the per-message ``flwr-clientapp`` (``clientapp_zygote``),
    serving ``socket`` beside the runtime's."""

    name = "clientapp parent"

    def __init__(self, socket: Path) -> None:
        super().__init__(socket, 0)
        self.command = [sys.executable, "-m", "omnirad_fl.client.clientapp_zygote", "--socket", str(self.socket)]


def parent_socket(runtime_socket: Path) -> Path:
    """Where the clientapp parent listens: beside the runtime, in its private folder."""
    return runtime_socket.with_name("clientapp.sock")


def serve_site(kept: Sequence[SiteRuntimeProcess], supernode: list[str], env: dict[str, str]) -> int:
    """Start the site's processes (the runtime, the clientapp parent), then the SuperNode; keep
    them up until the SuperNode exits or we get SIGTERM/SIGINT; stop all by PID. Returns the
    SuperNode's exit status (1 if one of them never started)."""
    stopping = threading.Event()
    before = {signum: signal.signal(signum, lambda *_: stopping.set()) for signum in (signal.SIGTERM, signal.SIGINT)}
    node: subprocess.Popen[bytes] | None = None
    try:
        for process in kept:
            process.start()
        for process in kept:
            if not process.wait_ready(stopping):
                print(f"omnirad-client: the {process.name} exited with status {process.exit_status()} before it "
                      "was ready; see its log above", file=sys.stderr)
                return 1
        node = subprocess.Popen(supernode, env=env)
        while node.poll() is None and not stopping.wait(1.0):
            for process in kept:
                if process.exit_status() is not None and not stopping.wait(RESTART_PAUSE) and node.poll() is None:
                    process.restarts += 1
                    print(f"omnirad-client: the {process.name} exited with status {process.exit_status()}; "
                          f"starting it again (restart {process.restarts})", file=sys.stderr, flush=True)
                    process.start()
        stop(node)
        return node.returncode
    finally:
        if node is not None:
            stop(node)
        for process in reversed(kept):
            process.close()
        for signum, handler in before.items():
            signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnirad_fl.client.runtime_supervisor",
                                     description="omnirad-client's site runtime beside its SuperNode (after the checks)")
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--cache-mib", type=int, required=True)
    parser.add_argument("supernode", nargs=argparse.REMAINDER, help="-- then the flower-supernode command")
    args = parser.parse_args(argv)
    command = args.supernode[1:] if args.supernode[:1] == ["--"] else args.supernode
    kept = [SiteRuntimeProcess(args.socket, args.cache_mib), ClientAppParent(parent_socket(args.socket))]
    return serve_site(kept, command, dict(os.environ))


if __name__ == "__main__":
    raise SystemExit(main())
