"""``omnirad-certs``: the files a federation needs before anyone connects.

Writes a certificate authority (its key optionally passphrase-protected), the SuperLink's TLS
certificate signed by it (valid for the host names and addresses the sites will dial), and files
each site's public authentication key under ``sites/`` (``omnirad-server`` registers every
``sites/*.pub`` with the SuperLink). Sites make their own key pairs (``omnirad-client --keygen``):
the coordinator never holds a site's private key.

Flower reads TLS files as PEM and SuperNode keys as OpenSSH-format NIST elliptic-curve keys; it
ships no generator for either (its docs point to an OpenSSL shell script), so this module makes
them with ``cryptography``, which Flower already depends on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from omnirad.logs import show_progress
from omnirad.private_files import write_private
from omnirad_fl.server.app_bundle import write_publisher_key

log = logging.getLogger(__name__)
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.crt", "ca.key", "server.crt", "server.key"
SITES_DIR = "sites"


def registered_key_path(certs: Path, site: str) -> Path:
    """Where a site's registered public key lives in a certificate folder."""
    return certs / SITES_DIR / f"{site}.pub"


def _key_encryption(passphrase: bytes | None) -> serialization.KeySerializationEncryption:
    return serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()


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


def register_site_key(certs: Path, site: str, public_key: Path) -> Path:
    """File ``site``'s public key (an OpenSSH NIST elliptic-curve key, as ``omnirad-client --keygen``
    writes it) for registration; refuses anything else, a private key above all."""
    if not SITE_NAME.match(site):
        raise ValueError(f"site name {site!r}: use letters, digits, '-' and '_' (at most 64)")
    data = public_key.read_bytes()
    if b"PRIVATE KEY" in data:
        raise ValueError(f"{public_key}: a private key; send only the site's public key (NAME.pub)")
    try:
        key = serialization.load_ssh_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as err:
        raise ValueError(f"{public_key}: not an OpenSSH public key ({err})") from err
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"{public_key}: not an elliptic-curve key (Flower's SuperNode needs a NIST curve)")
    target = registered_key_path(certs, site)
    if target.exists() and target.read_bytes().split()[:2] != data.split()[:2]:
        raise FileExistsError(f"{target} holds another key for site {site}: delete it to replace the site's key")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


LOCAL_HOSTS = ("localhost", "127.0.0.1")  # omnirad-server's own flwr calls dial the SuperLink here


def certificate_hosts(cert: x509.Certificate) -> set[str]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(names.get_values_for_type(x509.DNSName)) | {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}


def write_federation(certs: Path, hosts: Sequence[str], site_keys: Mapping[str, Path] | None = None, days: int = 365,
                     *, ca_passphrase: bytes | None = None) -> list[Path]:
    """Create the CA (unless it exists; its key encrypted with ``ca_passphrase`` when given), a
    server certificate valid for ``hosts`` plus localhost and 127.0.0.1 (reissued from the CA when
    it lacks one of them), and file each site's public key (``site_keys``: name -> .pub file)."""
    site_keys = dict(site_keys or {})
    bad = [site for site in site_keys if not SITE_NAME.match(site)]
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
        write_private(certs / CA_KEY, ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                            _key_encryption(ca_passphrase)))
        (certs / CA_CERT).write_bytes(ca_cert.public_bytes(pem))
        written += [certs / CA_CERT, certs / CA_KEY]
    server_cert = certs / SERVER_CERT
    current = x509.load_pem_x509_certificate(server_cert.read_bytes()) if server_cert.exists() else None
    if current is None or not set(wanted) <= certificate_hosts(current):
        if not (certs / CA_KEY).exists():
            raise FileNotFoundError(f"{certs / CA_KEY} is needed to issue a server certificate for {', '.join(wanted)}")
        ca_key = load_ca_key(certs / CA_KEY, ca_passphrase)
        ca_cert = x509.load_pem_x509_certificate((certs / CA_CERT).read_bytes())
        hosts_now = list(dict.fromkeys([*wanted, *(sorted(certificate_hosts(current)) if current else [])]))
        server_key, new_cert = make_server_certificate(ca_key, ca_cert, hosts_now, days)
        (certs / SERVER_KEY).unlink(missing_ok=True)
        write_private(certs / SERVER_KEY, server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                                   serialization.NoEncryption()))
        server_cert.write_bytes(new_cert.public_bytes(pem))
        written += [server_cert, certs / SERVER_KEY]
    for site, public_key in site_keys.items():
        target = registered_key_path(certs, site)
        if not target.exists():
            written.append(register_site_key(certs, site, public_key))
        else:
            register_site_key(certs, site, public_key)  # the same key again is fine; another is refused
    return written


def load_ca_key(path: Path, passphrase: bytes | None) -> ec.EllipticCurvePrivateKey:
    """The CA's key, decrypted with ``passphrase`` when it has one; a clear error otherwise."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), passphrase)
    except TypeError as err:  # encrypted but no passphrase, or a passphrase for a plain key
        fix = "is not passphrase-protected: drop --ca-passphrase-file" if passphrase else \
            "is passphrase-protected: give --ca-passphrase-file"
        raise ValueError(f"{path} {fix}") from err
    except ValueError as err:
        raise ValueError(f"{path}: cannot be read with this passphrase ({err})") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: not the elliptic-curve CA key omnirad-certs writes")
    return key


def site_key_argument(value: str) -> tuple[str, Path]:
    """``--site A=keys/A.pub`` as (name, file)."""
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--site {value!r}: expected NAME=PUBLIC_KEY_FILE, e.g. --site A=A.pub")
    return name, Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="omnirad-certs",
        description="Create a federation's CA and the SuperLink's TLS certificate, and file the sites' public "
                    "authentication keys. Existing files are kept, so the command can add sites later.",
        epilog="Each site makes its own key pair (omnirad-client --site NAME --keygen) and sends only NAME.pub. "
               "Give each site ca.crt (never ca.key or server.key); omnirad-server registers every sites/*.pub "
               "with the SuperLink.",
    )
    parser.add_argument("folder", type=Path, help="where to write the files (created if missing)")
    parser.add_argument("--site", action="append", dest="sites", default=[], metavar="NAME=PUBLIC_KEY",
                        help="a site's name and the public key file it sent (repeat for several)")
    parser.add_argument("--publisher", metavar="NAME",
                        help="also make the coordinator's app-signing key (publisher.key, publisher.pub): sites list "
                             "publisher.pub in trusted-publishers and run only apps it signed")
    parser.add_argument("--ca-passphrase-file", type=Path, metavar="FILE",
                        help="encrypt the CA key with the passphrase in FILE (and read it with it later)")
    parser.add_argument("--host", action="append", dest="hosts", default=[], metavar="NAME_OR_IP",
                        help="a host name or IP address the sites use to reach the server (repeat for several); "
                             "localhost and 127.0.0.1 are always included. A new name reissues the server "
                             "certificate from the CA")
    parser.add_argument("--days", type=int, default=365, help="validity of the certificates (default: 365)")
    args = parser.parse_args(argv)
    show_progress()
    try:
        site_keys = dict(site_key_argument(value) for value in args.sites)
        passphrase = args.ca_passphrase_file.read_bytes().strip() if args.ca_passphrase_file else None
        written = write_federation(args.folder, args.hosts, site_keys, args.days, ca_passphrase=passphrase)
        if args.publisher:
            written += list(write_publisher_key(args.folder, args.publisher))
    except (ValueError, OSError) as error:
        log.error("omnirad-certs: %s", error)
        return 2
    for path in written:
        log.info("wrote %s", path)
    if not written:
        log.info("nothing to do: %s already holds the CA, the server certificate and these sites' public keys",
                 args.folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
