"""The app the coordinator submits: the project's ``pyproject.toml`` and ``README.md`` in a folder of
their own, signed with the coordinator's publisher key (``omnirad.app_trust``), so that sites
that list the key in ``trusted-publishers`` run it and refuse anything else."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import tomli_w
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from omnirad.app_trust import SIGNED_FILES, signature_table
from omnirad.private_files import write_private

PUBLISHER_KEY, PUBLISHER_PUB = "publisher.key", "publisher.pub"


def write_publisher_key(folder: Path, publisher: str) -> tuple[Path, Path]:
    """The coordinator's Ed25519 signing key (OpenSSH, mode 600) and its public key for the sites."""
    private_path, public_path = folder / PUBLISHER_KEY, folder / PUBLISHER_PUB
    if private_path.exists():
        raise FileExistsError(f"{private_path} exists already: the sites trust that key; delete it to make a new one")
    key = Ed25519PrivateKey.generate()
    write_private(private_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                  serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_path.write_bytes(public + f" {publisher}\n".encode())
    return private_path, public_path


def load_publisher_key(path: Path) -> tuple[Ed25519PrivateKey, str]:
    """The signing key and the publisher name (the comment of the ``.pub`` beside it)."""
    key = serialization.load_ssh_private_key(path.read_bytes(), None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 key (omnirad-certs --publisher makes one)")
    public = path.with_suffix(".pub")
    name = public.read_text().split()[2] if public.exists() and len(public.read_text().split()) > 2 else "omnirad"
    return key, name


def write_signed_app(project: Path, folder: Path, key: Ed25519PrivateKey, publisher: str) -> Path:
    """``folder`` holding the project's app files, ``pyproject.toml`` signed; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        if stale.name not in SIGNED_FILES:
            raise FileExistsError(f"{stale}: the app folder holds only {', '.join(SIGNED_FILES)}")
    shutil.copyfile(project / "README.md", folder / "README.md")
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    readme = (folder / "README.md").read_bytes()
    pyproject.setdefault("tool", {}).setdefault("omnirad", {})["signature"] = signature_table(
        pyproject, readme, key, publisher)
    (folder / "pyproject.toml").write_text(tomli_w.dumps(pyproject))
    return folder
