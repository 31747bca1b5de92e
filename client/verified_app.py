"""``flwr-clientapp`` that installs only app bundles this site trusts (``omnirad.app_trust``).

``omnirad-client`` puts this program first on the SuperNode's PATH under Flower's name, so the
SuperNode's executor starts it for every message instead of Flower's; it checks the bundle before
Flower's installer writes or loads anything, then runs Flower's own ``flwr-clientapp``. A bundle
that fails the check is never installed: Flower answers the server with an error naming why.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.supernode.cli.flwr_clientapp import flwr_clientapp
from flwr.supernode.runtime import run_clientapp as flower_runtime

from omnirad.app_trust import parse_trusted, verify_bundle

TRUSTED_ENV = "OMNIRAD_TRUSTED_PUBLISHERS"  # a file of the site's trusted ssh-ed25519 publisher keys
log = logging.getLogger(__name__)


def verifying(install: Callable[..., Path], trusted_file: Path) -> Callable[..., Path]:
    """Flower's installer behind the site's check: the bundle's bytes are verified first."""
    trusted = parse_trusted(trusted_file.read_text().splitlines())

    def install_if_trusted(fab_file: Path | bytes, *args: Any, **kwargs: Any) -> Path:
        fab = fab_file if isinstance(fab_file, bytes) else Path(fab_file).read_bytes()
        publisher = verify_bundle(fab, trusted)  # AppNotTrusted: Flower replies with an error, installs nothing
        log.info("app bundle signed by %r, a trusted publisher", publisher)
        return install(fab_file, *args, **kwargs)

    return install_if_trusted


def main() -> None:
    trusted_file = os.environ.get(TRUSTED_ENV)
    if not trusted_file:
        sys.exit(f"flwr-clientapp (OmniRad-FL): {TRUSTED_ENV} is not set; omnirad-client sets it")
    flower_runtime.install_from_fab = verifying(flower_runtime.install_from_fab, Path(trusted_file))
    flwr_clientapp()


if __name__ == "__main__":
    main()
