"""Signed app bundles: a site runs only an app its hospital chose to trust.

OmniRad-FL's Flower app bundle (FAB) carries no code, only ``pyproject.toml`` (which components to
load, the run's configuration keys) and ``README.md``: every participant runs the OmniRad-FL
installed in its own environment. A SuperLink that someone else controls could still ship a bundle
with code in it, or components pointing elsewhere. So the coordinator signs the bundle it submits
(an Ed25519 key, as Flower's own app verification uses) and each site lists the publishers it
trusts; a site refuses, before installing or loading anything, a bundle that is unsigned, signed
by a key it does not trust, altered after signing, or holding any file besides those two.

The signature sits in ``pyproject.toml`` itself (``[tool.omnirad.signature]``) and covers the
parsed ``pyproject.toml`` without it (Flower re-serialises the file when it builds the bundle, so
bytes would not survive) and the bytes of ``README.md``. Flower 1.42 verifies apps only when they
come from Flower Hub (``--trusted-entities``); this is the same check for a self-hosted SuperLink.
No Flower here: the site hooks it in front of Flower's installer (``omnirad_fl.client.verified_app``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tomllib
import zipfile
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNED_FILES = ("pyproject.toml", "README.md")
FLOWER_MANIFEST = ".info/CONTENT"  # Flower's own list of the bundle's files and hashes


class AppNotTrusted(RuntimeError):
    """The app bundle is not one this site trusts; the message says why, with no path in it."""


def public_key_line(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def digest(pyproject: dict[str, Any], readme: bytes) -> bytes:
    """What is signed: the configuration as parsed (signature left out), and the README's hash."""
    unsigned = json.loads(json.dumps(pyproject))  # a deep copy that is plain JSON
    ours = unsigned.get("tool", {}).get("omnirad", {})
    ours.pop("signature", None)
    if not ours:  # the table that only carried the signature is not part of what was signed
        unsigned.get("tool", {}).pop("omnirad", None)
    unsigned.get("tool", {}).get("flwr", {}).pop("federations", None)  # Flower drops it from bundles
    payload = {"pyproject.toml": unsigned, "README.md": hashlib.sha256(readme).hexdigest()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).digest()


def signature_table(pyproject: dict[str, Any], readme: bytes, key: Ed25519PrivateKey, publisher: str) -> dict[str, str]:
    """``[tool.omnirad.signature]`` for these files, signed with ``key``."""
    signed_at = datetime.now(UTC).isoformat(timespec="seconds")
    message = digest(pyproject, readme) + signed_at.encode()
    return {"publisher": publisher, "public-key": public_key_line(key.public_key()), "signed-at": signed_at,
            "signature": base64.b64encode(key.sign(message)).decode()}


def parse_trusted(lines: Iterable[str]) -> list[Ed25519PublicKey]:
    """Trusted publishers as OpenSSH ``ssh-ed25519`` lines; ``ValueError`` naming a bad one."""
    keys = []
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            key = serialization.load_ssh_public_key(line.strip().encode())
        except (ValueError, TypeError) as err:
            raise ValueError(f"trusted publisher {line.strip()[:40]!r}...: not an OpenSSH public key") from err
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"trusted publisher {line.strip()[:40]!r}...: an ssh-ed25519 key is needed")
        keys.append(key)
    return keys


def verify_bundle(fab: bytes, trusted: list[Ed25519PublicKey]) -> str:
    """The publisher's name when ``fab`` is a bundle signed by a trusted key and holds nothing else;
    raises ``AppNotTrusted`` otherwise."""
    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as bundle:
            names = set(bundle.namelist()) - {FLOWER_MANIFEST}
            if names != set(SIGNED_FILES):
                extra = sorted(names - set(SIGNED_FILES))
                raise AppNotTrusted(f"the app bundle holds files besides {', '.join(SIGNED_FILES)}: "
                                    f"{', '.join(extra[:5]) or 'none of them'}")
            pyproject = tomllib.loads(bundle.read("pyproject.toml").decode())
            readme = bundle.read("README.md")
    except (zipfile.BadZipFile, tomllib.TOMLDecodeError, UnicodeDecodeError, KeyError) as err:
        raise AppNotTrusted(f"the app bundle cannot be read ({type(err).__name__})") from err
    table = pyproject.get("tool", {}).get("omnirad", {}).get("signature")
    if not isinstance(table, dict):
        raise AppNotTrusted("the app bundle is not signed: this site runs only apps signed by a publisher it trusts")
    try:
        key = serialization.load_ssh_public_key(str(table["public-key"]).encode())
        signature = base64.b64decode(str(table["signature"]), validate=True)
        message = digest(pyproject, readme) + str(table["signed-at"]).encode()
    except (KeyError, ValueError, TypeError) as err:
        raise AppNotTrusted("the app bundle's signature is malformed") from err
    if not isinstance(key, Ed25519PublicKey) or all(key.public_bytes_raw() != t.public_bytes_raw() for t in trusted):
        raise AppNotTrusted(f"the app bundle is signed by {table.get('publisher', 'an unnamed publisher')!r}, "
                            "whose key this site does not trust (trusted-publishers in its site file)")
    try:
        key.verify(signature, message)
    except InvalidSignature as err:
        raise AppNotTrusted("the app bundle was changed after it was signed") from err
    return str(table.get("publisher", ""))
