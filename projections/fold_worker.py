"""A rebuild's fold, in a process of its own (`python -m projections.fold_worker`).

A rebuild reads the log, decodes every event, folds it and writes rows. In one Python process all
of that shares one core, and reading alone (nats-py parsing each message and its headers) takes
most of it. So the rebuilding process only reads and passes each batch's raw envelopes on; this
process decodes, folds (the projection's own `Builder`) and hands back the statements to write,
which the rebuilding process sends to PostgreSQL — three processes working at once.

Frames both ways are a 4-byte big-endian length and a pickle. In: the projection, then
`("batch", [(seq, envelope bytes), ...])` frames, then `("end",)`. Out: `("writes", [statement,
...])` frames, then `("done", applied, unknown)`, or `("poison", seq, message)` and exit.
"""

from __future__ import annotations

import pickle
import struct
import sys
from typing import IO, Any

from projections.reader import record_of
from projections.runner import Builder, Poison, Statement, decode_batch, undecodable_poison

_LENGTH = struct.Struct(">I")


def read_frame(stream: IO[bytes]) -> Any:
    """One frame's object (None at the end of the stream)."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    return pickle.loads(stream.read(_LENGTH.unpack(head)[0]))  # our own parent's frames


def frame(obj: object) -> bytes:
    """A frame carrying `obj`."""
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


def fold(inp: IO[bytes], out: IO[bytes]) -> None:
    """Fold the batches of `inp`, answering on `out`."""
    projection = read_frame(inp)
    builder: Builder = projection.builder()
    applied = unknown = 0
    while True:
        message = read_frame(inp)
        if message is None:
            return  # the rebuilding process went away
        if message[0] == "end":
            break
        records = [record_of(seq, "", data) for seq, data in message[1]]
        items, skipped = decode_batch(records)
        try:
            undecodable_poison(items)
            builder.add(items, records[-1].seq, records[-1].envelope.at)
        except Poison as poison:
            out.write(frame(("poison", poison.seq, f"{type(poison.cause).__name__}: {poison.cause}")))
            out.flush()
            return
        applied += len(items)
        unknown += skipped
        if builder.should_flush():
            _hand_over(out, builder.take(final=False))
    _hand_over(out, builder.take(final=True))
    out.write(frame(("done", applied, unknown)))
    out.flush()


def _hand_over(out: IO[bytes], statements: list[Statement]) -> None:
    for statement in statements:  # one a frame: the first is written while the next is read
        out.write(frame(("writes", [statement])))
        out.flush()


if __name__ == "__main__":
    fold(sys.stdin.buffer, sys.stdout.buffer)
