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
