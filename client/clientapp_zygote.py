"""``python -m omnirad_fl.client.clientapp_zygote --socket PATH``: a site's warm parent for the
per-message ``flwr-clientapp``.

It imports Flower's ``flwr-clientapp`` and the site's checks once (``verified_app``: bundle
verification, the proxy to the site runtime; no PyTorch), then, for each request of the relay
(``clientapp_relay``), forks a child that takes the relay's arguments, environment, working folder
and standard streams and runs ``verified_app.main`` exactly as a fresh process would; the child's
exit status goes back to the relay. Forking a process that has imported Flower but opened no
connection and started no thread is safe; the parent never does either. Only this site's
operating-system user may connect (the socket is 0600 in the runtime's private folder, and each
connection's peer is checked with ``SO_PEERCRED``). ``omnirad-client`` starts it beside the site
runtime and starts it again if it dies; without it the relay runs the whole command itself.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omnirad_fl.client import verified_app
from omnirad_fl.client.clientapp_relay import STATUS_BYTES
from omnirad_fl.client.runtime_channel import peer_uid, private_folder_problem

MAX_REQUEST = 1 << 20  # arguments and environment: a few KiB


def stop_when_relay_goes(conn: socket.socket) -> None:
    """The relay closes the connection when it is stopped (or killed): stop as Flower's command
    stops on Ctrl-C, pushing what it can."""
    try:
        while conn.recv(1):
            pass
    except OSError:
        pass
    signal.raise_signal(signal.SIGINT)


def run_child(conn: socket.socket, streams: list[int], request: dict[str, Any]) -> None:
    """In the forked child: become the relay's process, run the command, report its status."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for target, fd in enumerate(streams):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])
    threading.Thread(target=stop_when_relay_goes, args=(conn,), daemon=True).start()
    status = 0
    try:
        verified_app.main()
    except SystemExit as done:  # what the interpreter does with it at exit: a message goes to stderr
        status = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if done.code is not None and not isinstance(done.code, int):
            print(done.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - reported on the relay's stderr, as the command itself would
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        conn.sendall(status.to_bytes(STATUS_BYTES, "big", signed=True))
    finally:
        os._exit(status)


def serve(path: Path) -> None:
    """Answer the relays on ``path`` until stopped."""
    problem = private_folder_problem(path.parent)
    if problem:
        raise PermissionError(f"clientapp parent socket: {problem}")
    verified_app.flower_clientapp_command()  # Flower's command and everything it imports, once
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped as they end
    path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        path.chmod(0o600)
        server.listen(16)
        print(f"site clientapp parent: ready on {path} (pid {os.getpid()})", flush=True)
        while True:
            conn, _ = server.accept()
            with conn:
                if peer_uid(conn) != os.getuid():
                    continue
                try:
                    data, streams, _, _ = socket.recv_fds(conn, MAX_REQUEST, 3)
                    request = json.loads(data)
                except (OSError, ValueError):
                    continue
                if len(streams) != 3:
                    for fd in streams:
                        os.close(fd)
                    continue
                if os.fork() == 0:
                    server.close()
                    run_child(conn, streams, request)
                for fd in streams:
                    os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnirad_fl.client.clientapp_zygote", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", type=Path, required=True, help="the Unix socket to serve (its folder: mode 0700)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve(args.socket)
    finally:
        args.socket.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
