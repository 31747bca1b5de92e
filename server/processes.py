"""Stop what we started, all of it: Flower's SuperLink and SuperNode start helpers (SuperExec,
ServerApp, ClientApp processes, Ray) that a signal to one PID, or to its process group, misses."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable, Iterable

import psutil


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_healthy(process: subprocess.Popen, healthy: Callable[[], bool], timeout: float, logs: str) -> None:
    """Wait for a started server to answer; raise, naming where to look, if it exits or stays silent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with code {process.returncode}; see {logs}")
        if healthy():
            return
        time.sleep(0.25)
    raise RuntimeError(f"{process.args[0]} did not answer in {timeout:.0f} s; see {logs}")


def stop_process_tree(pid: int, grace: float = 10.0) -> list[int]:
    """Terminate a process and every descendant, kill what is left after ``grace`` seconds, and
    return the PIDs that were stopped.

    Flower starts its SuperExec in a session of its own, so a process-group kill would miss it:
    the whole tree is collected first (while the parent links still exist), then terminated.
    """
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    return [proc.pid for proc in tree]


def still_running(pids: Iterable[int]) -> list[int]:
    """Those of ``pids`` that are alive (not zombies): none, once a stop worked."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive
