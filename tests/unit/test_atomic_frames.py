"""shared.atomic.write_frames uses two private methods of nats-py's client (it has no public call
for pre-built protocol frames). Pin their shape, so an upgrade that changes them fails here, by
name, and not as lost or stuck atomic batches; the batches themselves are tested against a real
server in tests/integration/test_eventlog.py."""

from __future__ import annotations

import inspect

from nats.aio.client import Client


def test_the_nats_py_internals_write_frames_relies_on_are_there() -> None:
    send, flush = Client._send_command, Client._flush_pending
    assert inspect.iscoroutinefunction(send) and inspect.iscoroutinefunction(flush)
    assert list(inspect.signature(send).parameters) == ["self", "cmd", "priority"]
    assert list(inspect.signature(flush).parameters) == ["self", "force_flush"]
    assert isinstance(Client().stats, dict) and "out_msgs" in Client().stats
