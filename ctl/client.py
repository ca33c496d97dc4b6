"""A synchronous control client: one request to a daemon's bus inbox, one reply back.

The client is a plain DEALER with a unique identity; the daemon answers with `BaseNode.reply`
over its ROUTER, so the client needs no endpoint of its own.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import zmq

from bus.codec import MalformedMessage, decode_untrusted, encode
from bus.messages import ControlReply, ControlRequest

_ids = itertools.count(1)


class ControlError(RuntimeError):
    """The daemon did not answer in time, or answered with an error."""


def control(
    endpoint: str, cmd: str, args: dict[str, Any] | None = None, timeout: float = 3.0
) -> dict[str, Any]:
    """Send `cmd` to the daemon at `endpoint` and return its result; raises ControlError."""
    req_id = next(_ids)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, f"ctl-{os.getpid()}-{req_id}".encode())
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
