"""STAND-IN for local development and tests; never used in production.

A throwaway PKI made with trustme: a CA that tests trust, a server certificate for
``127.0.0.1`` and ``localhost``, and a second CA nobody trusts for TLS-failure tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme

SERVER_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class PKIFiles:
    """Paths of the PEM files written by :meth:`TestPKI.write`."""

    ca: str
    cert: str
    key: str


class TestPKI:
    """A trusted test CA and a loopback server certificate it issued."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.server_cert = self.ca.issue_cert(*SERVER_NAMES)

    def write(self, directory: str | Path) -> PKIFiles:
        """Write ``ca.pem``, ``server.pem`` (leaf then chain) and ``server.key`` into ``directory``."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        files = PKIFiles(
            ca=str(folder / "ca.pem"),
            cert=str(folder / "server.pem"),
            key=str(folder / "server.key"),
        )
        self.ca.cert_pem.write_to_path(files.ca)
        Path(files.cert).write_bytes(b"".join(blob.bytes() for blob in self.server_cert.cert_chain_pems))
        self.server_cert.private_key_pem.write_to_path(files.key)
        return files

    @staticmethod
    def write_untrusted(directory: str | Path) -> PKIFiles:
        """Write a certificate for the same names issued by a fresh CA that nothing trusts.

        Serving with these files (or trusting only its ``ca.pem``) makes TLS verification fail.
        """
        return TestPKI().write(directory)

    @staticmethod
    def untrusted_ca_pem(path: str | Path) -> str:
        """Write the certificate of a fresh, unrelated CA to ``path`` and return the path."""
        trustme.CA().cert_pem.write_to_path(str(path))
        return str(path)
