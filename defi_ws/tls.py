"""TLS policy: safe by default.

:class:`TlsConfig` builds the ``ssl.SSLContext`` for ``wss://`` connections. By
default the server's certificate must chain to a trusted CA and match the host name,
and TLS 1.2 is the minimum. A certificate that fails is a TLS_FAILURE disconnect,
which is not retried unless the user's classifier says so.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

__all__ = ["TlsConfig"]


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """How to verify the venue and identify ourselves.

    Attributes:
        verify: verify the server certificate and host name (turning this off is
            for local testing only; each FeedClient using it logs a WARNING).
        ca_file: a PEM bundle of CAs to trust instead of the system store.
        client_cert: a PEM client certificate (mutual TLS).
        client_key: the key of ``client_cert`` (may be inside ``client_cert``).
        min_version: the lowest TLS version accepted.
    """

    verify: bool = True
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2

    def context(self) -> ssl.SSLContext:
        """Build the ``SSLContext``.

        Raises:
            OSError: a certificate or key file cannot be read.
            ssl.SSLError: a file is not valid PEM.
        """
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        ctx.minimum_version = self.min_version
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.client_cert is not None:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx
