"""Throw-away certificates laid out as QEMU ``tls-creds-x509`` directories."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Creds:
    """The two credential directories every contestant and the far side use."""

    client_dir: Path
    server_dir: Path

    @property
    def ca(self) -> Path:
        """The CA certificate (the same file content is in both directories)."""
        return self.client_dir / "ca-cert.pem"

    @property
    def client_cert(self) -> Path:
        """The client leaf certificate."""
        return self.client_dir / "client-cert.pem"

    @property
    def client_key(self) -> Path:
        """The client leaf private key."""
        return self.client_dir / "client-key.pem"


def make_creds(root: Path) -> Creds:
    """Create a CA, a server leaf for ``localhost`` and a client leaf under `root`."""
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    # trustme leaves carry EKU clientAuth+serverAuth, so this one is valid as a client cert.
    client = ca.issue_cert("client.bench.invalid")
    creds = Creds(client_dir=root / "client", server_dir=root / "server")
    for directory, leaf, role in (
        (creds.client_dir, client, "client"),
        (creds.server_dir, server, "server"),
    ):
        directory.mkdir(parents=True)
        ca.cert_pem.write_to_path(str(directory / "ca-cert.pem"))
        leaf.cert_chain_pems[0].write_to_path(str(directory / f"{role}-cert.pem"))
        leaf.private_key_pem.write_to_path(str(directory / f"{role}-key.pem"))
    return creds
