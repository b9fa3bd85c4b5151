"""The rules (``-x`` cdb files) of the mutual-TLS servers under test.

Both allow every IPv4 client by ``ip4/0.0.0.0_0``. The large one also holds
what a service that pins its users' certificates would: ``CERT_RULES``
distinct certificate fingerprints (``certhash/SHA256:<hex>``, the
SSL_PEER_CERT_HASH of each), each allowed with its own ``USER``; the bench's
client certificate is one of them, so its sessions run with the TLS stage
finding their rule at the first key it tries. In the small one every
certificate key misses (and the IP rule decides), so the pair of servers
measures what a table of that size costs a handshake, its lookups and the
variable it sets.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path

from s6tls.rules import Rule, encode
from s6tls.rules.cdbfile import write_cdb

CERT_RULES = 10_000
IP_RULE = "ip4/0.0.0.0_0"


@dataclass(frozen=True)
class RuleFiles:
    """The two cdb files, and what in the large one matches the bench's client."""

    ip_only: Path
    certificates: Path
    matching_key: str  # the key of the client's rule
    user: str  # the USER its rule sets
    rules: int  # certificate rules in the large file


def certificate_hash(cert_pem: Path) -> str:
    """``SHA256:`` and the lowercase hex digest of the certificate's DER: its certhash key."""
    der = ssl.PEM_cert_to_DER_cert(cert_pem.read_text())
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def make_rules(directory: Path, client_cert: Path, count: int = CERT_RULES) -> RuleFiles:
    """Write ip-only.cdb and certificates.cdb in directory; the client's
    fingerprint takes the place of one of the count in the middle of the table."""
    allow_ip = encode(Rule(allow=True))
    ip_only = directory / "ip-only.cdb"
    write_cdb(str(ip_only), {IP_RULE: allow_ip})
    mine = f"certhash/{certificate_hash(client_cert)}"
    middle = count // 2
    records = {IP_RULE: allow_ip}
    for i in range(count):
        key = mine if i == middle else f"certhash/{_fingerprint(i)}"
        records[key] = encode(Rule(allow=True, env=(("USER", f"user{i:05d}"),)))
    if len(records) != count + 1:
        raise AssertionError("two certificate rules share a fingerprint")
    certificates = directory / "certificates.cdb"
    write_cdb(str(certificates), records)
    return RuleFiles(ip_only, certificates, mine, f"user{middle:05d}", count)


def _fingerprint(i: int) -> str:
    """A made-up certificate fingerprint, distinct for each i."""
    return "SHA256:" + hashlib.sha256(f"s6tls bench client {i}".encode()).hexdigest()
