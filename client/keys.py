"""A site's authentication key pair, made at the site: the private key never leaves it.

Flower's SuperNode signs its requests with an OpenSSH-format NIST elliptic-curve key; the
SuperLink admits only nodes whose public key the coordinator registered. The coordinator needs the
public key alone (``omnirad-certs FOLDER --site NAME=NAME.pub``).
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from omnirad.private_files import write_private


def write_site_keys(private_path: Path, site: str) -> Path:
    """A new key pair: ``private_path`` (mode 600) and the public key beside it (``.pub``), which
    is returned. Refuses to replace an existing key: a site keeps the key it registered."""
    public_path = private_path.with_suffix(".pub")
    if private_path.exists() or public_path.exists():
        raise FileExistsError(f"{private_path} or {public_path} exists already: a site keeps its key; delete both "
                              "files to make a new one (and have the coordinator register the new public key)")
    private_path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    write_private(private_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                  serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_path.write_bytes(public + f" omnirad-site-{site}\n".encode())
    return public_path
