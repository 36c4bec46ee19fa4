"""The event log on a 3-node JetStream cluster started from deploy/nats/fleet-node.conf verbatim
(DESIGN §13): replicas chosen by the cluster's size, weaker replication refused, and the log
surviving the loss of its leader — every acknowledged append kept exactly once, identical logs on
every replica, a restarted node caught up; TLS on every listener, as the config has it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from shared.cluster import cluster_size, ensure_log, replicas_for
from shared.config import Settings
from shared.desired import DESIRED_STREAM, ensure_bucket
from shared.embedded import EmbeddedNats
from shared.embedded_cluster import NODE_CONFIG, EmbeddedNatsCluster, log_digests, move_leader, stream_leader
from shared.envelope import seal
from shared.errors import StreamMisconfigured, Unavailable
from shared.eventlog import EventLog
from shared.events.registry import SiteAdded
from shared.subjects import EVENTS_STREAM, event_subject
from shared.times import utcnow

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNatsCluster]:
    """Three nodes on loopback from deploy/nats/ (module scope: a cluster takes seconds to form)."""
    nodes = EmbeddedNatsCluster(tmp_path_factory.mktemp("cluster"))
    asyncio.run(nodes.start())
    yield nodes
    nodes.stop()


@pytest.fixture
async def cnc(cluster: EmbeddedNatsCluster) -> AsyncIterator[NATS]:
    client = await cluster.connect(max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    yield client
    await client.close()


def test_the_cluster_runs_the_deploy_config_verbatim(cluster: EmbeddedNatsCluster) -> None:
    text = NODE_CONFIG.read_text()
    assert "sync_interval: always" in text
    assert "include ./auth.conf" in text
    for node in cluster.nodes:
        copy = node.data_dir / NODE_CONFIG.name
        assert copy.read_bytes() == NODE_CONFIG.read_bytes()  # byte for byte, beside its auth.conf
        assert str(copy) in node.log_path.read_text()  # "Using configuration file: ..."


async def test_replicas_follow_the_cluster_size_and_the_setting(cnc: NATS, nc: NATS) -> None:
    assert cluster_size(cnc) == 3
    assert replicas_for(Settings(), cnc) == 3
    assert replicas_for(Settings(replicas=1), cnc) == 1
    assert cluster_size(nc) == 1  # the module's single embedded server
    assert replicas_for(Settings(), nc) == 1
    assert await ensure_log(cnc, Settings()) == 3
    info = await cnc.jetstream().stream_info(EVENTS_STREAM)
    assert info.config.num_replicas == 3
    assert (await cnc.jetstream().stream_info(DESIRED_STREAM)).config.num_replicas == 3


async def test_a_stream_with_fewer_replicas_than_asked_is_refused(nats_server: EmbeddedNats, nc: NATS) -> None:
    js = nc.jetstream()
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream(EVENTS_STREAM)
    await EventLog(nc).ensure_stream(1)
    with pytest.raises(StreamMisconfigured, match="FLEET_REPLICAS"):
        await EventLog(nc).ensure_stream(3)
    await ensure_bucket(nc, 1)
    with pytest.raises(StreamMisconfigured, match="FLEET_REPLICAS"):
        await ensure_bucket(nc, 3)


async def test_the_log_survives_the_loss_of_its_leader(cluster: EmbeddedNatsCluster, cnc: NATS) -> None:
    eventlog = EventLog(cnc, retry_for=60)
    await ensure_log(cnc, Settings())
    acked: list[str] = []  # ids of the events whose append the client saw acknowledged
    stop = asyncio.Event()

    async def writer(name: str) -> None:
        n = 0
        while not stop.is_set():
            site = f"{name}-{n}"
            envelope = seal(SiteAdded(site_id=site, name=site), actor="test", at=utcnow())
            with contextlib.suppress(Unavailable):  # not acknowledged: may or may not be stored
                await eventlog.append(event_subject("site", site), [envelope], 0)
                acked.append(envelope.id)
            n += 1

    writers = [asyncio.create_task(writer(f"w{i}")) for i in range(4)]
    while len(acked) < 200:
        await asyncio.sleep(0.05)
    leader = await stream_leader(cnc, EVENTS_STREAM)
    killed = cluster.index_of(leader)
    cluster.kill(killed)
    before = len(acked)
    while len(acked) < before + 200:  # appends go on under a new leader
        await asyncio.sleep(0.05)
    assert await stream_leader(cnc, EVENTS_STREAM) != leader
    stop.set()
    await asyncio.gather(*writers)

    survivors = [i for i in range(3) if i != killed]
    digests = []
    for index in survivors:
        await move_leader(cnc, EVENTS_STREAM, cluster.nodes[index].name)
        digests.append(await log_digests(cnc, EVENTS_STREAM))
    assert digests[0] == digests[1]

    await cluster.start_node(killed)  # the killed node comes back on its store and catches up
    await move_leader(cnc, EVENTS_STREAM, cluster.nodes[killed].name, timeout=60)
    assert await log_digests(cnc, EVENTS_STREAM) == digests[0]

    stored = [r.envelope.id async for r in eventlog.replay(subjects=event_subject("site", "*"))]
    assert len(stored) == len(set(stored)), "an event was written twice"
    missing = set(acked) - set(stored)
    assert not missing, f"{len(missing)} acknowledged events are not in the log"


def test_nodes_run_the_deploy_config_verbatim_with_their_auth_beside_it(cluster: EmbeddedNatsCluster) -> None:
    from shared.embedded_cluster import NODE_CONFIG

    for node in cluster.nodes:
        assert (node.data_dir / NODE_CONFIG.name).read_bytes() == NODE_CONFIG.read_bytes()
        assert (node.data_dir / "auth.conf").stat().st_mode & 0o777 == 0o600


def _varz(cluster: EmbeddedNatsCluster, index: int) -> dict[str, Any]:
    """A node's /varz over its https monitoring listener, verified against the cluster's CA."""
    url = f"https://127.0.0.1:{cluster.nodes[index].monitor_port}/varz"
    with urllib.request.urlopen(url, context=cluster.tls_context(), timeout=5) as reply:
        result: dict[str, Any] = json.loads(reply.read())
        return result


async def test_every_listener_speaks_tls_and_clients_verify_the_server(cluster: EmbeddedNatsCluster) -> None:
    varz = _varz(cluster, 0)
    assert varz["tls_required"] and not varz.get("tls_verify")  # clients: TLS, verifying the server
    assert varz["cluster"]["tls_required"] and varz["cluster"]["tls_verify"]  # routes: both sides verify
    # a client that does not speak TLS is refused, and so is one that does not trust the CA
    for url, tls in ((cluster.urls[0].replace("tls://", "nats://"), None),
                     (cluster.urls[0], ssl.create_default_context())):
        with pytest.raises(ssl.SSLCertVerificationError):
            await nats.connect(url, tls=tls, allow_reconnect=False, connect_timeout=3, max_reconnect_attempts=0)
    nc = await cluster.connect(allow_reconnect=False)
    try:
        assert nc.connected_url is not None and nc.connected_url.scheme == "tls"
    finally:
        await nc.close()
