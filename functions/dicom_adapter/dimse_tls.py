"""DIMSE over TLS (PS3.15 Annex B): the SSL contexts of the listener and of outgoing associations.

One set of files serves both directions, as DCMTK's `+tls key cert +cf ca` does: our
certificate and key identify us to peers (as server, and as client towards peers that verify
clients), and the CA file is what we trust. TLS 1.2 is the floor (BCP 195); Python's defaults
already refuse the ciphers BCP 195 forbids.

- Listener: with a CA, clients must present a certificate it signed (CERT_REQUIRED); without
  one, any client may connect (the calling-AE allow-list still applies).
- Outgoing (C-MOVE, commitment reports, C-STORE to a DIMSE destination) to a peer marked
  `"tls": true` in the AET dictionary or routing rules: the peer's certificate must chain to
  the CA (the system's trust store if none is given) and name the host we dialled.
"""

from __future__ import annotations

import os
import socket
import ssl
from dataclasses import dataclass
from typing import Any, Mapping

from .config import env_name


class TlsConfigError(ValueError):
    """The certificate, key or CA file is missing or unusable; the message says which."""


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str
    ca: str | None = None

    @classmethod
    def from_options(cls, cert: str | None, key: str | None, ca: str | None) -> "TlsFiles | None":
        """None when no certificate is configured; the key must come with the certificate."""
        if not cert and not key:
            if ca:
                raise TlsConfigError("--dimse_tls_ca needs --dimse_tls_cert and --dimse_tls_key")
            return None
        if not cert or not key:
            raise TlsConfigError("--dimse_tls_cert and --dimse_tls_key go together")
        return cls(cert, key, ca or None)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "TlsFiles | None":
        """The same settings in a Cloud Function's environment (DICOM_ADAPTER_DIMSE_TLS_*)."""
        env = os.environ if env is None else env
        return cls.from_options(*(env.get(env_name(f"dimse_tls_{part}")) for part in ("cert", "key", "ca")))

    def _load(self, context: ssl.SSLContext) -> ssl.SSLContext:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert, self.key)
            if self.ca:
                context.load_verify_locations(cafile=self.ca)
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(f"DIMSE TLS files ({self.cert}, {self.key}, {self.ca or 'no CA'}): {exc}") from None
        return context

    def server_context(self) -> ssl.SSLContext:
        context = self._load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        context.verify_mode = ssl.CERT_REQUIRED if self.ca else ssl.CERT_NONE
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the peer and its host name
        if not self.ca:
            context.load_default_certs()
        return self._load(context)


def tls_args(files: TlsFiles | None, host: str, peer_uses_tls: bool) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's `tls_args` for an association to `host`: None for a plain peer.

    Raises TlsConfigError for a TLS peer when no certificate is configured, rather than
    falling back to plain TCP towards a peer that expects TLS."""
    if not peer_uses_tls:
        return None
    if files is None:
        raise TlsConfigError("the peer is marked tls but no --dimse_tls_cert/--dimse_tls_key is configured")
    return files.client_context(), host


def associate(ae: Any, peer: Any, tls: TlsFiles | None, **kwargs: Any) -> Any:
    """An association to a peer of the AET dictionary: over TLS where the peer is marked so, and
    with Nagle's algorithm off. DIMSE is request/response, so with Nagle on every C-STORE waits
    for the peer's delayed ACK: C-MOVE to storescp ran at half its speed.

    Raises TlsConfigError as tls_args does."""
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.name, tls_args=tls_args(tls, peer.host, peer.tls), **kwargs)
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if assoc.is_established and sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return assoc
