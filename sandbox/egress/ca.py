"""The run's certificate authority: generated in memory, trusted only inside the sandbox.

The private keys never touch a filesystem: a leaf's key and certificate are handed to
``ssl`` through a memfd, read back through /proc/self/fd and closed at once."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import threading
from collections import OrderedDict

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LEAF_DAYS = 7  # a run rarely lasts longer; the CA dies with the run anyway
CA_DAYS = 30
CLOCK_SKEW = datetime.timedelta(hours=1)
MAX_CONTEXTS = 256  # server contexts kept, the least recently used dropped (a new one costs a key and a signature)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "faramesh-sandbox"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _subject_alt(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


class CertificateAuthority:
    """One per run: ``cert_pem`` goes into the sandbox's trust stores; ``context_for(host)``
    is a server-side TLS context presenting a certificate for ``host`` signed by it."""

    def __init__(self, session_id: str = "", max_contexts: int = MAX_CONTEXTS):
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        name = _name(f"faramesh-sandbox egress CA {session_id}".strip())
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + datetime.timedelta(days=CA_DAYS))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
                     .sign(self._key, hashes.SHA256()))
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self._contexts: OrderedDict[str, ssl.SSLContext] = OrderedDict()  # least recently used first
        self._max_contexts = max(1, max_contexts)
        self._lock = threading.Lock()

    def leaf_pem(self, host: str) -> bytes:
        """A fresh key and a certificate for ``host``, both PEM, key first."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(_name(host)).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
                .add_extension(x509.SubjectAlternativeName([_subject_alt(host)]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                               critical=False)
                .sign(self._key, hashes.SHA256()))
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return key_pem + cert.public_bytes(serialization.Encoding.PEM)

    def context_for(self, host: str) -> ssl.SSLContext:
        """A server context for ``host`` (the last ``max_contexts`` hosts' are kept: an agent may
        make up names without end, e.g. under a `host: *.example.com` rule)."""
        with self._lock:
            context = self._contexts.get(host)
            if context is not None:
                self._contexts.move_to_end(host)
            else:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                context.set_alpn_protocols(["http/1.1"])  # the proxy speaks HTTP/1.1 only
                fd = os.memfd_create("faramesh-egress-leaf", os.MFD_CLOEXEC)
                try:
                    os.write(fd, self.leaf_pem(host))
                    context.load_cert_chain(f"/proc/self/fd/{fd}")
                finally:
                    os.close(fd)
                self._contexts[host] = context
                while len(self._contexts) > self._max_contexts:
                    self._contexts.popitem(last=False)  # a handshake still using it keeps its own reference
            return context

    def trust_bundle(self, existing: bytes) -> bytes:
        """``existing`` PEM certificates with this CA appended."""
        if existing and not existing.endswith(b"\n"):
            existing += b"\n"
        return existing + self.cert_pem
