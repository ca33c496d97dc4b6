"""A synchronous control client: one request to a daemon's bus inbox, one reply back.

The client is a plain DEALER with a unique identity (``ctl-<pid>-<n>``); the daemon answers with
`BaseNode.reply` over its ROUTER, so the client needs no endpoint of its own. On a tcp endpoint
it is a CURVE client with the operator's key (``keys/ctl.key_secret`` in the run directory),
pinning the daemon's public key: the only key whose names may send changing commands.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import zmq

from bus.codec import MalformedMessage, decode_untrusted, encode
from bus.curve import CLI
from bus.messages import ControlReply, ControlRequest
from configs import Config
from configs.cmdline import curve_keys

_ids = itertools.count(1)
# (the daemon's public key, our public key, our secret key)
ClientCurve = tuple[bytes, bytes, bytes]


class ControlError(RuntimeError):
    """The daemon did not answer in time, or answered with an error."""


def request(
    config: Config, proc: str, cmd: str, args: dict[str, Any] | None = None, timeout: float = 3.0
) -> dict[str, Any]:
    """Send `cmd` to the cluster's process `proc` (CURVE on tcp); raises ControlError."""
    return control(config.endpoint(proc), cmd, args, timeout, client_curve(config, proc))


def client_curve(config: Config, proc: str) -> ClientCurve | None:
    """The CLI's CURVE keys for talking to `proc` (None on ipc); `MissingKey` if absent: not a
    ControlError, so a missing key is never mistaken for a daemon that is down."""
    keys = curve_keys(config)
    if keys is None or not config.endpoint(proc).startswith("tcp://"):
        return None
    public, secret = keys.pair(CLI)
    return keys.public(proc), public, secret


def control(
    endpoint: str,
    cmd: str,
    args: dict[str, Any] | None = None,
    timeout: float = 3.0,
    curve: ClientCurve | None = None,
) -> dict[str, Any]:
    """Send `cmd` to the daemon at `endpoint` and return its result; raises ControlError."""
    req_id = next(_ids)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, f"{CLI}-{os.getpid()}-{req_id}".encode())
    if curve is not None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, curve[0])
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve[1])
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve[2])
    elif endpoint.startswith("tcp://"):
        sock.close(0)
        raise ControlError(f"{endpoint}: a tcp endpoint needs the CLI's CURVE keys")
    try:
        sock.connect(endpoint)
        sock.send(encode(ControlRequest(req_id, cmd, args or {})))
        deadline_ms = int(timeout * 1000)
        while sock.poll(deadline_ms):
            try:
                reply = decode_untrusted(sock.recv())
            except MalformedMessage as e:
                raise ControlError(f"{endpoint}: malformed reply ({e.reason})") from None
            if isinstance(reply, ControlReply) and reply.req_id == req_id:
                if not reply.ok:
                    raise ControlError(f"{cmd}: {reply.error}")
                return reply.result
        raise ControlError(
            f"{endpoint}: no answer to {cmd!r} within {timeout:g} s (is it running?)"
        )
    finally:
        sock.close(0)
