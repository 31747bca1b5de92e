"""The local channel between Flower's per-message ``flwr-clientapp`` and the site runtime: a Unix
socket in a folder only the site's operating-system user can open, carrying length-prefixed frames.

Standard library only, so the per-message side stays free of PyTorch. The framing is written here
by hand because a stream socket has no message boundaries and the standard library's framed
connections (``multiprocessing.connection``) hide the accepted socket that the peer check
(``SO_PEERCRED``) needs and add a pickle-based protocol the channel must not offer.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from pathlib import Path

RUNTIME_ENV = "OMNIRAD_SITE_RUNTIME"  # the runtime's socket; omnirad-client sets it for the SuperNode
LENGTH = struct.Struct("!I")  # each frame: its length (4 bytes, network order), then its bytes
MAX_FRAME = 2**31 - 1  # protobuf's own limit on one message


class ChannelClosed(ConnectionError):
    """The other end closed the connection before a whole frame arrived."""


def send_frames(sock: socket.socket, frames: list[bytes]) -> None:
    """Write ``frames`` in order, each behind its length."""
    sock.sendall(b"".join(LENGTH.pack(len(frame)) + frame for frame in frames))


def recv_frames(sock: socket.socket, count: int) -> list[bytes]:
    """Read exactly ``count`` frames; ``ChannelClosed`` if the peer goes away in between."""
    frames = []
    for _ in range(count):
        (size,) = LENGTH.unpack(_recv_exactly(sock, LENGTH.size))
        if size > MAX_FRAME:
            raise ValueError(f"a frame of {size} bytes is over the channel's limit")
        frames.append(_recv_exactly(sock, size))
    return frames


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ChannelClosed(f"connection closed after {got} of {size} bytes")
        got += n
    return bytes(buffer)


def peer_uid(sock: socket.socket) -> int:
    """The user id of the process at the other end of a Unix socket (Linux ``SO_PEERCRED``)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def private_folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot hold the runtime's socket (None when it can): it must be a real folder
    owned by this user that no one else may open (mode 0700)."""
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        return f"{folder}: no such folder"
    if not stat.S_ISDIR(info.st_mode):
        return f"{folder}: not a folder (or a symbolic link)"
    if info.st_uid != os.getuid():
        return f"{folder}: owned by user {info.st_uid}, not by this user ({os.getuid()})"
    if stat.S_IMODE(info.st_mode) & 0o077:
        return f"{folder}: mode {stat.S_IMODE(info.st_mode):o}: others may open it (chmod 700)"
    return None
