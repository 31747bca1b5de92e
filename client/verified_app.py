"""``flwr-clientapp`` that installs only app bundles this site trusts (``omnirad.app_trust``) and
hands each message to the site's runtime (``omnirad_fl.client.runtime``) when it has one.

``omnirad-client`` puts this program first on the SuperNode's PATH under Flower's name, so the
SuperNode's executor starts it for every message instead of Flower's; it checks the bundle before
Flower's installer writes or loads anything, then runs Flower's own ``flwr-clientapp``. A bundle
that fails the check is never installed: Flower answers the server with an error naming why.
With a runtime, Flower's ClientApp loading is replaced by a proxy to it, so this process never
imports PyTorch (the import is the cost the runtime saves on every message).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.supernode.runtime import run_clientapp as flower_runtime

from omnirad.app_trust import parse_trusted, verify_bundle
from omnirad_fl.client.runtime_channel import RUNTIME_ENV
from omnirad_fl.client.runtime_proxy import forwarding_loader

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


def flower_clientapp_command() -> Callable[[], None]:
    """Flower's ``flwr-clientapp`` entry point, loaded from its own file. Importing it by name first
    runs the ``flwr.supernode.cli`` package, which imports the whole SuperNode (its SQL object store
    and SQLAlchemy): measured here, 3.5 s of start-up per message against 1.6 s this way, for code
    this per-message process never runs."""
    runtime_file = Path(flower_runtime.__file__)
    spec = importlib.util.spec_from_file_location("omnirad_flwr_clientapp", runtime_file.parents[1] / "cli" / "flwr_clientapp.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"Flower's flwr-clientapp command is not beside {runtime_file}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    command: Callable[[], None] = module.flwr_clientapp
    return command


def main() -> None:
    trusted_file, runtime_socket = os.environ.get(TRUSTED_ENV), os.environ.get(RUNTIME_ENV)
    if not trusted_file and not runtime_socket:
        sys.exit(f"flwr-clientapp (OmniRad-FL): neither {TRUSTED_ENV} nor {RUNTIME_ENV} is set; omnirad-client sets them")
    if trusted_file:
        flower_runtime.install_from_fab = verifying(flower_runtime.install_from_fab, Path(trusted_file))
    if runtime_socket:
        flower_runtime.get_load_client_app_fn = forwarding_loader(Path(runtime_socket))
    flower_clientapp_command()()


if __name__ == "__main__":
    main()
