"""The per-message ``flwr-clientapp`` a site's SuperNode starts: it hands its command line, its
environment and its standard streams to the site's warm ClientApp parent
(``omnirad_fl.client.clientapp_zygote``), which forks a child that runs it, and exits with the
child's status. Measured on 2 cores, Flower's own ``flwr-clientapp`` spent about 2 s of every
message importing Flower (docs/benchmarks.md); this program imports the standard library only and
runs with ``python -IS``, so the import happens once per site, in the parent.

Without the parent (not started yet, or gone), it runs the whole ``flwr-clientapp`` itself
(``omnirad_fl.client.verified_app``), as before: slower, never wrong.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

ZYGOTE_ENV = "OMNIRAD_CLIENTAPP_ZYGOTE"  # the parent's socket (omnirad-client sets it)
PYTHON_ENV = "OMNIRAD_CLIENTAPP_PYTHON"  # the site's Python, for the fallback
STATUS_BYTES = 4


def request(argv: list[str]) -> bytes:
    """What the parent needs to run this command as this process would: its arguments, environment
    and working folder (the standard streams travel as file descriptors beside it)."""
    return json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}).encode()


def relay(path: str, argv: list[str]) -> int | None:
    """Run ``argv`` in a child of the parent at ``path``; its exit status, or None when no parent
    answers (the caller then runs the command itself)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        socket.send_fds(conn, [request(argv)], [0, 1, 2])
    except OSError:
        conn.close()
        return None
    # stopped (the SuperExec cancels the task): closing the connection tells the child to stop too
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: os._exit(1))
    status = b""
    while len(status) < STATUS_BYTES:
        chunk = conn.recv(STATUS_BYTES - len(status))
        if not chunk:  # the child died without a status (killed)
            return 1
        status += chunk
    return int.from_bytes(status, "big", signed=True)


def main() -> None:
    path = os.environ.get(ZYGOTE_ENV, "")
    status = relay(path, sys.argv) if path else None
    if status is None:
        python = os.environ.get(PYTHON_ENV, sys.executable)
        os.execv(python, [python, "-m", "omnirad_fl.client.verified_app", *sys.argv[1:]])
    sys.exit(status)


if __name__ == "__main__":
    main()
