"""``omnirad-certs``: the files a federation needs before anyone connects.

Writes a certificate authority, the SuperLink's TLS certificate signed by it (valid for the host
names and addresses the sites will dial), and one authentication key pair per site: the private
key stays at the site (``flower-supernode --auth-supernode-private-key``), the public key is
registered with the SuperLink (``omnirad-server`` registers every ``sites/*.pub`` it finds).

Flower reads TLS files as PEM and SuperNode keys as OpenSSH-format NIST elliptic-curve keys; it
ships no generator for either (its docs point to an OpenSSL shell script), so this module makes
them with ``cryptography``, which Flower already depends on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from omnirad.logs import show_progress

log = logging.getLogger(__name__)
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.crt", "ca.key", "server.crt", "server.key"
SITES_DIR = "sites"


def site_key_paths(certs: Path, site: str) -> tuple[Path, Path]:
    """Where a site's private and public authentication keys live in a certificate folder."""
    return certs / SITES_DIR / f"{site}.key", certs / SITES_DIR / f"{site}.pub"


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner only, refusing to overwrite one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OmniRad-FL"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _subject_alternative_names(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_ca(days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("OmniRad-FL federation CA"))
        .issuer_name(_name("OmniRad-FL federation CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def make_server_certificate(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, hosts: Sequence[str],
                            days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(_subject_alternative_names(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def write_site_keys(certs: Path, site: str) -> tuple[Path, Path]:
    """A site's authentication key pair in the OpenSSH format Flower's SuperNode and CLI read."""
    private_path, public_path = site_key_paths(certs, site)
    if private_path.exists() or public_path.exists():
        raise FileExistsError(f"{private_path} or {public_path} exists already: a site keeps its key; "
                              "delete both files to issue a new one (and re-register the site)")
    private_path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(private_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                   serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_path.write_bytes(public + f" omnirad-site-{site}\n".encode())
    return private_path, public_path


LOCAL_HOSTS = ("localhost", "127.0.0.1")  # omnirad-server's own flwr calls dial the SuperLink here


def certificate_hosts(cert: x509.Certificate) -> set[str]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(names.get_values_for_type(x509.DNSName)) | {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}


def write_federation(certs: Path, hosts: Sequence[str], sites: Sequence[str], days: int = 365) -> list[Path]:
    """Create the CA (unless it exists), a server certificate valid for ``hosts`` plus localhost and
    127.0.0.1 (reissued from the CA when it lacks one of them), and a key pair for each new site."""
    bad = [site for site in sites if not SITE_NAME.match(site)]
    if bad:  # before anything is written
        raise ValueError(f"site name {bad[0]!r}: use letters, digits, '-' and '_' (at most 64)")
    wanted = list(dict.fromkeys([*hosts, *LOCAL_HOSTS]))
    certs.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    pem = serialization.Encoding.PEM
    if not (certs / CA_CERT).exists():
        if (certs / SERVER_CERT).exists():
            raise FileExistsError(f"{certs / SERVER_CERT} exists without {certs / CA_CERT}: refusing to mix CAs")
        ca_key, ca_cert = make_ca(days)
        _write_private(certs / CA_KEY, ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
        (certs / CA_CERT).write_bytes(ca_cert.public_bytes(pem))
        written += [certs / CA_CERT, certs / CA_KEY]
    server_cert = certs / SERVER_CERT
    current = x509.load_pem_x509_certificate(server_cert.read_bytes()) if server_cert.exists() else None
    if current is None or not set(wanted) <= certificate_hosts(current):
        if not (certs / CA_KEY).exists():
            raise FileNotFoundError(f"{certs / CA_KEY} is needed to issue a server certificate for {', '.join(wanted)}")
        ca_key = serialization.load_pem_private_key((certs / CA_KEY).read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate((certs / CA_CERT).read_bytes())
        hosts_now = list(dict.fromkeys([*wanted, *(sorted(certificate_hosts(current)) if current else [])]))
        server_key, new_cert = make_server_certificate(ca_key, ca_cert, hosts_now, days)
        (certs / SERVER_KEY).unlink(missing_ok=True)
        _write_private(certs / SERVER_KEY, server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                                    serialization.NoEncryption()))
        server_cert.write_bytes(new_cert.public_bytes(pem))
        written += [server_cert, certs / SERVER_KEY]
    for site in sites:
        if not any(path.exists() for path in site_key_paths(certs, site)):  # a site keeps the key it has
            written += list(write_site_keys(certs, site))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="omnirad-certs",
        description="Create a federation's CA, the SuperLink's TLS certificate and one authentication key pair "
                    "per site. Existing files are kept, so the command can add sites later.",
        epilog="Give each site its own sites/NAME.key and ca.crt (never ca.key or server.key); "
               "omnirad-server registers every sites/*.pub with the SuperLink.",
    )
    parser.add_argument("folder", type=Path, help="where to write the files (created if missing)")
    parser.add_argument("--sites", nargs="+", default=[], metavar="NAME", help="site names, e.g. A B C")
    parser.add_argument("--host", action="append", dest="hosts", default=[], metavar="NAME_OR_IP",
                        help="a host name or IP address the sites use to reach the server (repeat for several); "
                             "localhost and 127.0.0.1 are always included. A new name reissues the server "
                             "certificate from the CA")
    parser.add_argument("--days", type=int, default=365, help="validity of the certificates (default: 365)")
    args = parser.parse_args(argv)
    show_progress()
    try:
        written = write_federation(args.folder, args.hosts, args.sites, args.days)
    except (ValueError, OSError) as error:
        log.error("omnirad-certs: %s", error)
        return 2
    for path in written:
        log.info("wrote %s", path)
    if not written:
        log.info("nothing to do: %s already holds the CA, the server certificate and these sites' keys", args.folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
