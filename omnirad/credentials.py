"""Checks on a federation's TLS certificates and authentication keys, made before anything starts.

A wrong credential otherwise shows up late and vaguely: a SuperNode with an expired CA certificate
or a key pair that does not match retries its connection for ever, a SuperLink serving a
certificate its CA did not sign is refused by every site with a TLS error in the site's log, and
two sites registered with one public key both authenticate as whichever registered first. Each
check names the file and what is wrong with it. ``cryptography`` (which Flower depends on) reads
the files; none of this is in Flower, which checks only at the TLS handshake or request signature.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from omnirad.private_files import exposure_problem

SITE_KEY_COMMENT = "omnirad-site-"  # the comment omnirad-client --keygen writes after a site's public key


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def read_certificate(path: Path) -> x509.Certificate:
    """The PEM certificate in ``path``; ``ValueError`` naming the file when it is not one."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable PEM certificate ({err})") from err


def validity_problem(path: Path, cert: x509.Certificate, *, now: dt.datetime | None = None) -> str | None:
    """Why ``cert`` is not valid today (expired or not yet valid), naming its dates; else None."""
    now = now or _now()
    if now > cert.not_valid_after_utc:
        return f"{path}: expired on {cert.not_valid_after_utc:%Y-%m-%d}; the coordinator reissues it with omnirad-certs"
    if now < cert.not_valid_before_utc:
        return f"{path}: not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (is this machine's clock right?)"
    return None


def ca_certificate_problems(path: Path, *, now: dt.datetime | None = None) -> list[str]:
    """What is wrong with the federation's CA certificate at a site: unreadable, not a CA, not valid today."""
    try:
        cert = read_certificate(path)
    except ValueError as err:
        return [str(err)]
    found = [problem] if (problem := validity_problem(path, cert, now=now)) else []
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        found.append(f"{path}: not a CA certificate (the site needs the federation's ca.crt, not the server's)")
    return found


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def server_credential_problems(ca_path: Path, cert_path: Path, key_path: Path, *,
                               now: dt.datetime | None = None) -> list[str]:
    """What stops the SuperLink's TLS from working for the sites: a certificate not valid today,
    not issued by the federation's CA (the sites would refuse it), or not matching its key; and a
    key other users may read."""
    found = ca_certificate_problems(ca_path, now=now)
    try:
        cert = read_certificate(cert_path)
    except ValueError as err:
        return [*found, str(err)]
    if problem := validity_problem(cert_path, cert, now=now):
        found.append(problem)
    if not found and not signed_by(cert, read_certificate(ca_path)):
        found.append(f"{cert_path}: not issued by {ca_path}: the sites, which trust that CA, would refuse the "
                     "server; reissue it with omnirad-certs from the same certs folder")
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as err:
        return [*found, f"{key_path}: not a readable unencrypted PEM private key ({err})"]
    if key.public_key() != cert.public_key():
        found.append(f"{key_path}: not the key of {cert_path}: use the pair omnirad-certs wrote together")
    if exposed := exposure_problem(key_path):
        found.append(exposed)
    return found


def site_key_problems(private_path: Path, site: str) -> list[str]:
    """What is wrong with a site's authentication key pair: the private key unreadable or readable
    by other users, its public key (``.pub`` beside it, the one the coordinator registered) missing
    or of another key, or made for another site (the comment ``omnirad-client --keygen`` writes
    names the site)."""
    try:
        key = serialization.load_ssh_private_key(private_path.read_bytes(), None)
        exposed = exposure_problem(private_path)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as err:
        return [f"{private_path}: not a readable unencrypted OpenSSH private key ({err})"]
    found = [exposed] if exposed else []
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return [*found, f"{private_path}: not an elliptic-curve key (Flower's SuperNode needs a NIST curve)"]
    public_path = private_path.with_suffix(".pub")
    if not public_path.is_file():
        return [*found, f"{public_path}: missing: keep the public key the coordinator registered beside the private key"]
    fields = public_path.read_text(errors="replace").split()
    try:
        public = serialization.load_ssh_public_key(" ".join(fields[:2]).encode())
    except (ValueError, UnsupportedAlgorithm) as err:
        return [*found, f"{public_path}: not an OpenSSH public key ({err})"]
    if public != key.public_key():
        found.append(f"{private_path}: does not match {public_path}: the server admits only the registered key's pair")
    made_for = fields[2].removeprefix(SITE_KEY_COMMENT) if len(fields) > 2 and fields[2].startswith(SITE_KEY_COMMENT) else None
    if made_for is not None and made_for != site:
        found.append(f"{public_path}: made for site {made_for!r}, not {site!r}: each site authenticates with its own key")
    return found


def shared_site_keys(public_keys: Mapping[str, Path]) -> list[str]:
    """Sites registered with the same public key (name -> .pub file): they could not be told apart."""
    owner: dict[bytes, str] = {}
    found = []
    for site, path in sorted(public_keys.items()):
        key = b" ".join(path.read_bytes().split()[:2])
        if key in owner:
            found.append(f"{path}: the same key as site {owner[key]}'s: each site registers its own key")
        else:
            owner[key] = site
    return found
