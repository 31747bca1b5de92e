"""``python -m omnirad_fl.client.runtime --socket PATH``: the site runtime, one long-lived process
per site that imports the ClientApp once and answers every message of every run the site joins.

Flower 1.42 starts a fresh ``flwr-clientapp`` per message, which would import PyTorch, timm and
MONAI (about 14 s and 1.1 GiB on 2 cores), load the encoder and read the feature cache each time.
Here they stay: the encoder on the site's device and the site's data and features in the
in-memory site cache (``omnirad.site_cache``, bounded by ``--cache-mib``). Flower's per-message
process forwards the message over the channel (``runtime_channel``); only this site's
operating-system user may connect (checked with ``SO_PEERCRED``). Messages are answered one at a
time, as a single ClientApp process would: the site cache is not shared between threads.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import signal
import socket
import socketserver
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode
from flwr.common.serde import context_from_proto, context_to_proto, message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Context as ProtoContext  # pylint: disable=E0611
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=E0611
from flwr.supercore.app_utils import start_parent_process_monitor

from omnirad.protocol import WRONG_VERSION
from omnirad.site_cache import set_cache_limit
from omnirad_fl.client.runtime_channel import (
    ChannelClosed,
    peer_uid,
    private_folder_problem,
    recv_frames,
    send_frames,
)

PACKAGE = "omnirad-fl"
REQUEST_FRAMES = 3  # the app bundle's OmniRad-FL version, the Message, the Context (protobuf)
log = logging.getLogger(__name__)
ClientAppLike = Callable[[Message, Context], Message]


def respond(app: ClientAppLike, installed: str, bundle_version: str, message: Message, context: Context) -> Message:
    """The ClientApp's reply, or a coded error when the bundle is for another OmniRad-FL version
    (the bundle carries no code: the site runs what it installed, so the two must agree)."""
    if bundle_version != installed:
        log.error("refused a message of an app bundle for OmniRad-FL %s: this runtime runs %s", bundle_version, installed)
        return Message(Error(code=WRONG_VERSION, reason=f"the app bundle is for OmniRad-FL {bundle_version}, but this "
                                                        f"site runs {installed}: install the same version on both sides"),
                       reply_to=message)
    try:
        return app(message, context)
    except Exception as err:  # noqa: BLE001 - answered as flwr-clientapp answers a ClientApp that raises
        log.exception("the ClientApp raised")
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(err)}:<'{err}'>"),
                       reply_to=message)


def answer(app: ClientAppLike, installed: str, frames: list[bytes]) -> list[bytes]:
    """One request's frames in, the reply Message's and the (updated) Context's frames out."""
    version, message_bytes, context_bytes = frames
    message = message_from_proto(ProtoMessage.FromString(message_bytes))
    context = context_from_proto(ProtoContext.FromString(context_bytes))
    received = time.time()
    reply = respond(app, installed, version.decode(), message, context)
    # one line per message on the site's terminal: what the server asked, how long the message took to
    # get here from the server (Flower's polls, the per-message process) and how long the answer took
    print(f"site runtime: {message.metadata.message_type} reached the runtime "
          f"{received - message.metadata.created_at:.1f} s after the server sent it, answered in "
          f"{time.time() - received:.1f} s{' (error)' if reply.has_error() else ''}", flush=True)
    return [message_to_proto(reply).SerializeToString(), context_to_proto(context).SerializeToString()]


class _Request(socketserver.BaseRequestHandler):
    server: SiteRuntime

    def handle(self) -> None:
        try:
            frames = recv_frames(self.request, REQUEST_FRAMES)
        except ChannelClosed:  # omnirad-client's readiness probe, or a shim that gave up
            return
        send_frames(self.request, answer(self.server.app, self.server.version, frames))


class SiteRuntime(socketserver.UnixStreamServer):
    """Serves ``app`` on the socket ``path`` (its folder must be private to this user) to
    connections whose peer runs as this user; ``uid_of`` reads a connection's peer user id."""

    def __init__(self, path: Path, app: ClientAppLike, version: str,
                 uid_of: Callable[[socket.socket], int] = peer_uid) -> None:
        problem = private_folder_problem(path.parent)
        if problem:
            raise PermissionError(f"site runtime socket: {problem}")
        path.unlink(missing_ok=True)  # left by a runtime that was killed
        self.path, self.app, self.version, self.uid_of = path, app, version, uid_of
        super().__init__(str(path), _Request)
        path.chmod(0o600)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        uid = self.uid_of(request)
        if uid != os.getuid():
            log.warning("refused a connection from user %d: only this site's user (%d) may use its runtime",
                        uid, os.getuid())
            return False
        return True

    def server_close(self) -> None:
        super().server_close()
        self.path.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnirad_fl.client.runtime", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", type=Path, required=True, help="the Unix socket to serve (its folder: mode 0700)")
    parser.add_argument("--cache-mib", type=int, default=1024,
                        help="what the site cache keeps of data and encoded features (site-cache-mib)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s site runtime %(levelname)s: %(message)s")
    start_parent_process_monitor(os.getppid())  # ends with the omnirad-client that started it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stopped by PID: close and remove the socket
    set_cache_limit(args.cache_mib << 20)
    from omnirad_fl.client.app import app  # the one slow import (PyTorch, timm, MONAI), once per runtime

    version = importlib.metadata.version(PACKAGE)
    with SiteRuntime(args.socket, app, version) as runtime:
        # on the site's terminal whatever the ClientApp's import made of logging (warnings only, unless verbose)
        print(f"site runtime: OmniRad-FL {version} ready on {args.socket} (pid {os.getpid()})", flush=True)
        runtime.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
