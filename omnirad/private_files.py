"""Secrets on disk (private keys): readable by their owner only, and never overwritten.

Sites write their authentication keys (``omnirad_fl.client.keys``), the coordinator its CA, server
and publisher keys (``omnirad_fl.server``): one helper both may import, so neither imports the other.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner only, refusing to overwrite one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def exposure_problem(path: Path) -> str | None:
    """Why a secret on disk is not private (other users may read or write it), like ssh's refusal
    of an unprotected key file; None when it is, or where POSIX modes mean nothing (Windows)."""
    if os.name != "posix":
        return None
    mode = path.stat().st_mode & 0o777
    if not mode & 0o077:
        return None
    return f"{path}: readable or writable by other users (mode {mode:03o}): a private key must be its owner's alone; `chmod 600 {path}`"
