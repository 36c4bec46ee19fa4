"""The JetStream adapter (shared.jetstream, shared.transient): one `ensure` creates a missing
store with the table's settings, accepts an equal one, and refuses a weaker one naming the
setting without changing it; the transient errors are real errors of real servers."""

from __future__ import annotations

import contextlib
import dataclasses
import os

import asyncpg
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from shared.embedded import EmbeddedNats, free_port
from shared.errors import StreamMisconfigured, Unavailable
from shared.jetstream import DESIRED, Store, ensure, state_images
from shared.transient import NATS_TRANSIENT, PG_TRANSIENT, reachable

# The desired-state row's settings (the strictest KV) on a stream of the test's own.
STORE = dataclasses.replace(DESIRED, stream="ADAPTER_TEST", subjects=("adapter.test.>",))


@pytest.fixture
async def fresh(nc: NATS) -> Store:
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await nc.jetstream().delete_stream(STORE.stream)
    return STORE


async def test_ensure_creates_a_missing_store_as_the_table_says(nc: NATS, fresh: Store) -> None:
    created = (await ensure(nc, fresh)).config
    assert created.subjects == ["adapter.test.>"] and created.max_msgs_per_subject == 1
    assert created.deny_delete and created.deny_purge and not created.allow_rollup_hdrs
    assert created.allow_atomic and created.allow_direct and created.duplicate_window == 120.0
    again = await ensure(nc, fresh)  # an equal store is accepted as it is
    assert again.created == (await nc.jetstream().stream_info(fresh.stream)).created


@pytest.mark.parametrize(("change", "setting"), [
    ({"deny_purge": False}, "deny_purge"),
    ({"allow_atomic": False}, "allow_atomic"),
    ({"allow_rollup_hdrs": True, "deny_purge": False}, "allow_rollup_hdrs"),  # the server ties the two
    ({"max_age": 3600.0}, "max_age"),
])
async def test_ensure_refuses_a_weaker_store_naming_the_setting_and_changes_nothing(
        nc: NATS, fresh: Store, change: dict[str, object], setting: str) -> None:
    js = nc.jetstream()
    await js.add_stream(fresh.config().evolve(**change))
    with pytest.raises(StreamMisconfigured, match=setting):
        await ensure(nc, fresh)
    after = (await js.stream_info(fresh.stream)).config
    assert all(bool(getattr(after, key)) == bool(value) for key, value in change.items())  # untouched


async def test_ensure_refuses_fewer_replicas_than_asked(nc: NATS, fresh: Store) -> None:
    await ensure(nc, fresh, 1)
    with pytest.raises(StreamMisconfigured, match="num_replicas"):
        await ensure(nc, fresh, 3)


async def test_an_object_store_made_by_nats_py_passes_its_row(nc: NATS) -> None:
    js = nc.jetstream()
    row = state_images("registry")
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_object_store(row.stream.removeprefix("OBJ_"))
    await js.create_object_store(row.stream.removeprefix("OBJ_"))  # as an older `fleet up` made it
    assert (await ensure(nc, row)).config.name == row.stream


async def test_real_errors_are_classified_transient_or_not(nc: NATS, nats_server: EmbeddedNats,
                                                           database_url: str) -> None:
    with pytest.raises(nats.errors.NoRespondersError) as no_responders:
        await nc.request("adapter.nobody.listens", b"", timeout=1.0)
    assert isinstance(no_responders.value, NATS_TRANSIENT)
    with pytest.raises(Unavailable, match="the test subject not reachable"), reachable("the test subject"):
        await nc.request("adapter.nobody.listens", b"", timeout=1.0)
    with pytest.raises(nats.js.errors.NotFoundError) as missing:
        await nc.jetstream().stream_info("ADAPTER_NO_SUCH_STREAM")
    assert not isinstance(missing.value, NATS_TRANSIENT)  # a missing stream stays missing
    closed = await nats.connect(nats_server.url, user_credentials=os.environ["FLEET_NATS_CREDS"])
    await closed.close()
    with pytest.raises(nats.errors.ConnectionClosedError) as gone:
        await closed.publish("adapter.test.x", b"")
    assert isinstance(gone.value, NATS_TRANSIENT)

    refused: BaseException | None = None
    try:  # nothing listens there: PostgreSQL is down
        await asyncpg.connect(f"postgresql://nobody@127.0.0.1:{free_port()}/none", timeout=5)
    except Exception as exc:  # whatever asyncpg raises must be classified transient
        refused = exc
    assert isinstance(refused, PG_TRANSIENT)
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.PostgresError) as undefined:
            await conn.execute("SELECT * FROM adapter_no_such_table")
        assert not isinstance(undefined.value, PG_TRANSIENT)  # a wrong query is no outage
    finally:
        await conn.close()
