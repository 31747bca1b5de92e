"""What Flower's per-message ``flwr-clientapp`` runs in place of the ClientApp when the site has a
runtime (``omnirad_fl.client.runtime``): it forwards the message and context over the site's
channel and returns the runtime's reply. It imports no PyTorch, so a message costs Flower's own
start-up (about 1.4 s and 70 MiB) instead of the whole stack's (14 s and 1.1 GiB).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message
from flwr.common.serde import context_from_proto, context_to_proto, message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Context as ProtoContext  # pylint: disable=E0611
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=E0611

from omnirad.protocol import RUNTIME_UNAVAILABLE
from omnirad_fl.client.runtime_channel import peer_uid, recv_frames, send_frames

# How long a message waits for a runtime that is starting again (after it was killed, say): its
# start on a busy 2-core machine takes 15 to 60 s. Then the site answers with an error, never hangs.
WAIT_SECONDS = 120.0
log = logging.getLogger(__name__)


def connect(path: Path, wait: float) -> socket.socket:
    """A connection to the runtime at ``path``, retried while it is not (yet) listening;
    ``TimeoutError`` after ``wait`` seconds; ``PermissionError`` if another user serves it."""
    deadline = time.monotonic() + wait
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no site runtime answered at {path} in {wait:.0f} s") from None
            time.sleep(0.5)
            continue
        owner = peer_uid(sock)
        if owner != os.getuid():
            sock.close()
            raise PermissionError(f"{path} is served by user {owner}, not by this site's user")
        return sock


class RuntimeProxy:
    """A ClientApp stand-in: ``proxy(message=..., context=...)`` as Flower calls a ClientApp."""

    def __init__(self, path: Path, bundle_version: str, wait: float = WAIT_SECONDS) -> None:
        self.path, self.bundle_version, self.wait = path, bundle_version, wait

    def __call__(self, message: Message, context: Context) -> Message:
        try:
            with connect(self.path, self.wait) as sock:
                send_frames(sock, [self.bundle_version.encode(), message_to_proto(message).SerializeToString(),
                                   context_to_proto(context).SerializeToString()])
                reply_bytes, context_bytes = recv_frames(sock, 2)
        except OSError as err:  # TimeoutError, PermissionError, ChannelClosed: the runtime is gone or not ours
            log.error("site runtime unavailable: %s", err)
            return Message(Error(code=RUNTIME_UNAVAILABLE, reason="the site runtime did not answer (it may be "
                                                                   "restarting); see the site's log"), reply_to=message)
        # Flower pushes this very Context back to the SuperNode after the call: update it in place
        context.state = context_from_proto(ProtoContext.FromString(context_bytes)).state
        return message_from_proto(ProtoMessage.FromString(reply_bytes))


def forwarding_loader(path: Path) -> Callable[..., Callable[[str, str, str], RuntimeProxy]]:
    """A stand-in for Flower's ``get_load_client_app_fn``: its loader returns a proxy to the
    runtime at ``path`` that carries the installed bundle's version."""

    def get_load_client_app_fn(*_args: Any, **_kwargs: Any) -> Callable[[str, str, str], RuntimeProxy]:
        def load(_fab_id: str, fab_version: str, _fab_hash: str) -> RuntimeProxy:
            return RuntimeProxy(path, fab_version)

        return load

    return get_load_client_app_fn
