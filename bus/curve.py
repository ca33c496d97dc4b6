"""CURVE keys for tcp endpoints: one certificate pair per node in a key directory (``run/keys``).

Layout (czmq/pyzmq convention): ``<name>.key`` holds a node's public key and ``<name>.key_secret``
its public and secret keys. A ROUTER accepts only clients whose ``.key`` is in the directory,
so a process without a certificate made for this cluster cannot inject frames or commands.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import zmq.auth

ZAP_DOMAIN: Final = "nicteam"  # keys are registered under this domain, not "*" (see DESIGN)


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """A directory of node certificates."""

    directory: Path

    def public(self, name: str) -> bytes:
        """The public key of node ``name`` (what a client needs to reach its server socket)."""
        public, _ = zmq.auth.load_certificate(self.directory / f"{name}.key")
        return public

    def pair(self, name: str) -> tuple[bytes, bytes]:
        """(public, secret) keys of node ``name``."""
        public, secret = zmq.auth.load_certificate(self.directory / f"{name}.key_secret")
        if secret is None:
            raise ValueError(f"no secret key for {name} in {self.directory}")
        return public, secret


def generate_keys(directory: str | os.PathLike[str], names: list[str]) -> CurveKeys:
    """Create certificates for ``names`` that do not have one yet; secrets are owner-only."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in names:
        if not (path / f"{name}.key_secret").exists():
            _, secret_file = zmq.auth.create_certificates(path, name)
            os.chmod(secret_file, 0o600)
    return CurveKeys(path)
