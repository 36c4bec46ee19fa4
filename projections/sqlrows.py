"""Reading and writing msgspec row Structs as PostgreSQL rows in bulk: one `= ANY($1)` select to
load what a batch touches and one `unnest` upsert to write it back; rebuilds add rows as JSON."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Generic, TypeVar

import asyncpg
import msgspec

R = TypeVar("R", bound=msgspec.Struct)

_ENCODER = msgspec.json.Encoder()


def _jsonb_out(value: Any) -> bytes:
    return b"\x01" + _ENCODER.encode(value)  # jsonb's binary format: a version byte, then the text


def _jsonb_in(data: bytes) -> Any:
    return msgspec.json.decode(data[1:])


async def init_connection(conn: asyncpg.Connection) -> None:
    """jsonb in and out as Python values, encoded by msgspec (binary, so COPY can carry it too)."""
    await conn.set_type_codec("jsonb", schema="pg_catalog", format="binary",
                              encoder=_jsonb_out, decoder=_jsonb_in)


def _json(value: Any) -> str | None:
    return None if value is None else _ENCODER.encode(value).decode()


class RowTable(Generic[R]):
    """A table whose rows are instances of one Struct; `types` gives each column's SQL type."""

    def __init__(self, name: str, row_type: type[R], key: str, types: dict[str, str]) -> None:
        self.name = name
        self.row_type = row_type
        self.key = key
        self.columns: list[str] = list(row_type.__struct_fields__)
        self.types = {column: types.get(column, "text") for column in self.columns}
        # jsonb travels as text and is cast in SQL: asyncpg would read a list value as an array dimension.
        self.json_columns = {c for c in self.columns if self.types[c] == "jsonb"}
        params = ", ".join(f"${i}::{'text' if c in self.json_columns else self.types[c]}[]"
                           for i, c in enumerate(self.columns, 1))
        selects = ", ".join(f"{c}::jsonb" if c in self.json_columns else c for c in self.columns)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in self.columns if c != key)
        self.upsert_sql = (
            f"INSERT INTO {name} ({', '.join(self.columns)}) SELECT {selects} "
            f"FROM unnest({params}) AS u({', '.join(self.columns)}) "
            f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
        )
        self.insert_json_sql = (f"INSERT INTO {name} ({', '.join(self.columns)}) SELECT {', '.join(self.columns)} "
                                f"FROM json_populate_recordset(NULL::{name}, $1::json)")
        self.load_sql = f"SELECT {', '.join(self.columns)} FROM {{}}{name} WHERE {key} = ANY($1::text[])"

    def from_record(self, record: asyncpg.Record | dict[str, Any]) -> R:
        """A row Struct from a database record."""
        return msgspec.convert(dict(record), self.row_type)

    async def load(self, conn: asyncpg.Connection, keys: Iterable[str], schema: str | None = None
                   ) -> dict[str, R]:
        """The stored rows among `keys`, by key (from `schema`, else the search path)."""
        wanted = list(keys)
        if not wanted:
            return {}
        records = await conn.fetch(self.load_sql.format(f"{schema}." if schema else ""), wanted)
        return {record[self.key]: self.from_record(record) for record in records}

    def insert_json(self, rows: Sequence[R]) -> tuple[str, tuple[str]]:
        """SQL and argument adding rows that are not there yet (rebuilds) in one statement: msgspec
        encodes them as one JSON array in one call and PostgreSQL takes it apart
        (`json_populate_recordset`), so the work of a bulk write falls on the server's process."""
        return self.insert_json_sql, (_ENCODER.encode(rows).decode(),)

    async def upsert(self, conn: asyncpg.Connection, rows: Sequence[R]) -> None:
        """Insert or replace `rows` in one statement."""
        if not rows:
            return
        columns: list[list[Any]] = [
            [_json(getattr(row, c)) for row in rows] if c in self.json_columns else [getattr(row, c) for row in rows]
            for c in self.columns
        ]
        await conn.execute(self.upsert_sql, *columns)
