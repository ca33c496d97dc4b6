"""CURVE keys for tcp endpoints, and the ZAP handler that binds each key to one name.

Layout (czmq/pyzmq convention): ``<name>.key`` holds a node's public key and ``<name>.key_secret``
its public and secret keys, one pair per process of the cluster plus ``ctl`` for the operator's
CLI, all in the run directory's ``keys/`` folder (0700, every file 0600).

A CURVE server (a node's ROUTER on tcp) admits only the public keys of that folder, under the
``ZAP_DOMAIN`` domain; the ZAP reply's user id is the name the key belongs to, and every message
carries it (the ``User-Id`` property), so the transport can refuse a connection that speaks
under a name its key is not for (nic1's key speaking as h1). The CLI's key speaks as its
per-request names (``ctl-<pid>-<n>``): several commands may run at once.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85

ZAP_DOMAIN: Final = "nicteam"  # keys are registered under this domain, not "*" (see DESIGN)
CLI: Final = "ctl"  # the operator's key: its connections speak as "ctl-..." names
KEY_DIR: Final = "keys"  # the folder of the run directory that holds the cluster's keys
USER_ID: Final = "User-Id"  # the message property ZAP's user id arrives in
MAKE_KEYS: Final = "make them with `nicteam keys`, or copy the cluster's keys/ folder here"

# reason, peer address, the refused key (z85, "" if none): counted and logged by the node
Denied = Callable[[str, str, str], None]


class MissingKey(LookupError):
    """A key a process needs is not in the key folder; the message says which and what to do."""


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """A directory of node certificates; with `members`, only theirs admit anyone (a key left
    in the folder by another cluster's config speaks for nobody here)."""

    directory: Path
    members: frozenset[str] | None = None

    def public(self, name: str) -> bytes:
        """The public key of node ``name`` (what a client needs to reach its server socket)."""
        public, _ = _load(self.directory / f"{name}.key", name, "public")
        return public

    def pair(self, name: str) -> tuple[bytes, bytes]:
        """(public, secret) keys of node ``name``."""
        path = self.directory / f"{name}.key_secret"
        public, secret = _load(path, name, "secret")
        if secret is None:
            raise MissingKey(f"no CURVE secret key for {name} in {path}")
        _check_z85(secret, name, path)
        return public, secret

    def names(self) -> dict[bytes, str]:
        """Every public key of the folder (z85) -> the name it belongs to."""
        out: dict[bytes, str] = {}
        for path in sorted(self.directory.glob("*.key")):
            try:
                public, _ = zmq.auth.load_certificate(path)
            except (OSError, ValueError):
                continue  # not a certificate: it admits nobody
            if self.members is None or path.stem in self.members:
                out[public] = path.stem
        return out


def _load(path: Path, name: str, what: str) -> tuple[bytes, bytes | None]:
    """The (public, secret) keys of certificate `path`, the public one checked; MissingKey with
    the file and what to do if it is absent or unreadable."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError):
        raise MissingKey(f"no CURVE {what} key for {name}: {path} (run `nicteam keys`)") from None
    _check_z85(public, name, path)
    return public, secret


def _check_z85(key: bytes, name: str, path: Path) -> None:
    """A key libzmq will take (40 z85 characters), or MissingKey: a damaged file (a bad copy
    between machines) would otherwise fail inside setsockopt with a bare EINVAL traceback."""
    try:
        ok = len(key) == 40 and len(z85.decode(key)) == 32
    except (ValueError, LookupError, TypeError, struct.error):  # not z85 (or past 2**32)
        ok = False
    if not ok:
        raise MissingKey(f"damaged CURVE key for {name}: {path} (copy or make it again)")


def speaks_as(key_name: str, claimed: str) -> bool:
    """Whether a connection authenticated with ``key_name``'s key may speak as ``claimed``."""
    return claimed == key_name or (key_name == CLI and claimed.startswith(f"{CLI}-"))


def generate_keys(directory: str | os.PathLike[str], names: list[str]) -> CurveKeys:
    """Create certificates for ``names`` that do not have one yet; every file owner-only."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    # Machines sharing a run dir may all `up` at once: one writer at a time, so a key pair is
    # made once and never replaced under a process that already loaded it.
    lock = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in names:
            if not (path / f"{name}.key_secret").exists():
                public_file, secret_file = zmq.auth.create_certificates(path, name)
                os.chmod(public_file, 0o600)
                os.chmod(secret_file, 0o600)
    finally:
        os.close(lock)  # and the lock with it
    return CurveKeys(path)


class ClusterAuthenticator(AsyncioAuthenticator):
    """ZAP for one node: admits the cluster's public keys only; the user id is the key's name."""

    def __init__(self, context: zmq.asyncio.Context, keys: CurveKeys, denied: Denied) -> None:
        super().__init__(context)
        self._names = keys.names()  # z85, as pyzmq passes keys to the check
        self._on_denied = denied
        self._address = ""
        # The base class admits or refuses by itself unless told where keys live: tell it our
        # own callback, so each refusal is seen (and counted) here.
        self.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        """The credentials provider's check (pyzmq calls it with the z85 key)."""
        if domain != ZAP_DOMAIN:
            self._on_denied("domain", self._address, key.decode(errors="replace"))
            return False
        if key not in self._names:
            self._on_denied("unknown-key", self._address, key.decode(errors="replace"))
            return False
        return True

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # The address is not passed to the key check; requests are handled one at a time.
        self._address = msg[3].decode(errors="replace") if len(msg) > 3 else ""
        await super().handle_zap_message(msg)

    def curve_user_id(self, client_public_key: bytes) -> str:
        """The name the key belongs to (every message from the connection carries it)."""
        return self._names.get(z85.encode(client_public_key), "")
