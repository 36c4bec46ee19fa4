"""A JetStream cluster of nats-server processes on loopback, from `deploy/nats/fleet-node.conf`
verbatim (only the environment variables it names differ per node). Used by `fleet up --cluster
N`, the cluster tests and the cluster benchmark. TLS is on, as the config has it: the nodes'
certificate comes from a CA of the cluster's own (shared/pki.py), and clients verify against its
`tls_ca` (`connect` does).

Nodes can be killed (SIGKILL) and restarted on the same store, which is what the failover tests
do; `stream_leader` asks `$JS.API.STREAM.INFO` which node leads a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from shared.embedded import _stop_process, _wait_for_port, die_with_parent, free_port, nats_server_binary
from shared.errors import Unavailable
from shared.pki import loopback_pki
from shared.secretfiles import open_log, private_dir, write_private
from shared.transient import NATS_TRANSIENT

if TYPE_CHECKING:
    from shared.auth.authority import Authority

DEPLOY_NATS = Path(__file__).resolve().parents[1] / "deploy" / "nats"
NODE_CONFIG = DEPLOY_NATS / "fleet-node.conf"
CLUSTER_NAME = "fleet"


def node_auth(authority: Authority | None, node_dir: Path) -> str:
    """A node's `auth.conf`: the JWT-mode configuration of `authority` (its own resolver
    directory), or deploy/nats/auth.conf as shipped (no auth) without one."""
    if authority is None:
        return (DEPLOY_NATS / "auth.conf").read_text()
    return authority.server_config(node_dir / "jwt")


@dataclass
class ClusterNode:
    """One nats-server of the cluster."""

    name: str
    data_dir: Path
    port: int
    route_port: int
    monitor_port: int
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """Client URL of this node."""
        return f"tls://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """Where this node writes its log."""
        return self.data_dir / "nats-server.log"

    @property
    def running(self) -> bool:
        """Is the process alive?"""
        return self.proc is not None and self.proc.poll() is None


class ClusterInfo(msgspec.Struct):
    """The `cluster` part of a stream's info: who leads, who follows."""

    leader: str | None = None
    replicas: list[dict[str, object]] = []


class _StreamInfoReply(msgspec.Struct):
    cluster: ClusterInfo | None = None


class EmbeddedNatsCluster:
    """`size` nats-server nodes forming one JetStream cluster on 127.0.0.1."""

    def __init__(self, data_dir: Path, size: int = 3, *, ports: list[tuple[int, int, int]] | None = None,
                 authority: Authority | None = None, creds: str | None = None) -> None:
        if size != 3:  # the config names three routes; 5 nodes need two more FLEET_ROUTE_n lines
            raise ValueError("deploy/nats/fleet-node.conf describes a 3-node cluster")
        self.data_dir = Path(data_dir)
        ports = ports or [(free_port(), free_port(), free_port()) for _ in range(size)]
        self.nodes = [ClusterNode(f"fleet-nats-{i}", self.data_dir / f"node-{i}", *ports[i]) for i in range(size)]
        self.authority = authority  # JWT mode (every client authenticates), as the single server
        self.creds = creds  # an admin identity for the readiness check, in JWT mode
        self.pki = loopback_pki(self.data_dir / "tls")

    @property
    def tls_ca(self) -> str:
        """The CA file clients verify the nodes against (FLEET_NATS_TLS_CA)."""
        return str(self.pki.ca)

    def tls_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts this cluster's CA."""
        return ssl.create_default_context(cafile=self.tls_ca)

    async def connect(self, **options: Any) -> NATS:
        """A client connection to every node, verifying them over TLS."""
        options.setdefault("user_credentials", self.creds)
        return await nats.connect(self.urls, tls=self.tls_context(), **options)

    @property
    def urls(self) -> list[str]:
        """Client URLs of every node."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated (what FLEET_NATS_URL takes)."""
        return ",".join(self.urls)

    def ports(self) -> list[tuple[int, int, int]]:
        """(client, route, monitor) port of each node, to start again on the same ones."""
        return [(n.port, n.route_port, n.monitor_port) for n in self.nodes]

    def _env(self, node: ClusterNode) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
        env.update({
            "FLEET_NODE_NAME": node.name,
            "FLEET_NODE_LISTEN": f"127.0.0.1:{node.port}",
            "FLEET_NODE_MONITOR": f"127.0.0.1:{node.monitor_port}",
            "FLEET_NODE_STORE": str(node.data_dir / "jetstream"),
            "FLEET_CLUSTER_NAME": CLUSTER_NAME,
            "FLEET_ROUTE_LISTEN": f"127.0.0.1:{node.route_port}",
            "FLEET_NODE_TLS_CERT": str(self.pki.cert),
            "FLEET_NODE_TLS_KEY": str(self.pki.key),
            "FLEET_NODE_TLS_CA": str(self.pki.ca),
        })
        for i, other in enumerate(self.nodes, start=1):
            env[f"FLEET_ROUTE_{i}"] = f"tls://127.0.0.1:{other.route_port}"
        return env

    async def start_node(self, index: int, timeout: float = 20.0) -> ClusterNode:
        """Start (or restart, on its store) one node and wait until it accepts clients."""
        node = self.nodes[index]
        private_dir(node.data_dir)
        # deploy/nats/fleet-node.conf byte for byte, beside this node's auth.conf (which it includes)
        config = node.data_dir / NODE_CONFIG.name
        config.write_bytes(NODE_CONFIG.read_bytes())
        write_private(node.data_dir / "auth.conf", node_auth(self.authority, node.data_dir))
        with open_log(node.log_path) as log:
            node.proc = subprocess.Popen(  # noqa: ASYNC220 - a daemon child, waited for below
                [str(nats_server_binary()), "-c", str(config)], env=self._env(node),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=die_with_parent,  # noqa: PLW1509 - the child runs only a pre-resolved prctl call
            )
        await _wait_for_port(node.port, node.proc, node.name, node.log_path, timeout)
        return node

    async def start(self, timeout: float = 30.0) -> EmbeddedNatsCluster:
        """Start every node and wait until JetStream has a meta leader (the cluster can create
        streams)."""
        await asyncio.gather(*(self.start_node(i, timeout) for i in range(len(self.nodes))))
        await self.wait_ready(timeout)
        return self

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the running nodes agree on a JetStream meta leader."""
        deadline = time.monotonic() + timeout
        nc = await self.connect(max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        try:
            while True:
                try:
                    reply = await nc.request("$JS.API.INFO", b"", timeout=1.0)
                    if b'"error"' not in reply.data:
                        return
                except NATS_TRANSIENT:
                    pass
                if time.monotonic() > deadline:
                    raise Unavailable(f"the NATS cluster has no JetStream leader after {timeout:.0f}s; "
                                      f"see {self.data_dir}/node-*/nats-server.log")
                await asyncio.sleep(0.1)
        finally:
            await nc.close()

    def kill(self, index: int) -> None:
        """Crash one node (SIGKILL)."""
        _stop_process(self.nodes[index].proc, signal.SIGKILL, 5)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node gracefully."""
        for node in self.nodes:
            _stop_process(node.proc, signal.SIGTERM, timeout)

    def index_of(self, server_name: str) -> int:
        """The node index of a server name."""
        return next(i for i, n in enumerate(self.nodes) if n.name == server_name)


async def stream_info(nc: NATS, stream: str, timeout: float = 2.0) -> _StreamInfoReply:
    """`$JS.API.STREAM.INFO` of a stream (its `cluster` part)."""
    reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=timeout)
    return msgspec.json.decode(reply.data, type=_StreamInfoReply)


async def stream_leader(nc: NATS, stream: str, timeout: float = 10.0) -> str:
    """The server name of the node leading `stream` now (waiting for an election if there is none)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(*NATS_TRANSIENT, msgspec.DecodeError):
            info = await stream_info(nc, stream)
            if info.cluster is not None and info.cluster.leader:
                return info.cluster.leader
        if time.monotonic() > deadline:
            raise Unavailable(f"stream {stream} has no leader after {timeout:.0f}s")
        await asyncio.sleep(0.1)


async def move_leader(nc: NATS, stream: str, server_name: str, timeout: float = 30.0) -> None:
    """Make `server_name` the leader of `stream` (a stepdown with a preferred placement, repeated
    until it holds), so what a client reads next comes from that node's store."""
    deadline = time.monotonic() + timeout
    body = msgspec.json.encode({"placement": {"preferred": server_name}})
    while await stream_leader(nc, stream, timeout) != server_name:
        if time.monotonic() > deadline:
            raise Unavailable(f"{server_name} did not become leader of {stream} within {timeout:.0f}s")
        with contextlib.suppress(*NATS_TRANSIENT):
            await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", body, timeout=2.0)
        await asyncio.sleep(0.2)


async def log_digests(nc: NATS, stream: str, subjects: str = ">") -> dict[int, str]:
    """sha256 of (subject, headers-free body) of every message of `stream`, by stream sequence, as
    the leader's store holds them (read with an ordered consumer)."""
    import hashlib

    js = nc.jetstream()
    info = await js.stream_info(stream)
    last = int(info.state.last_seq)
    digests: dict[int, str] = {}
    if not last:
        return digests
    # a consumer asked for right after a leader change may time out, or be refused while JetStream
    # settles ("temporarily unavailable", 503): ask again
    async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(NATS_TRANSIENT),
            reraise=True, wait=wait_fixed(0.5), stop=stop_after_attempt(10)):
        with attempt:
            sub = await js.subscribe(subjects, stream=stream, ordered_consumer=True,
                                     pending_msgs_limit=-1, pending_bytes_limit=-1)
    try:
        while True:
            msg = await sub.next_msg(timeout=10)
            seq = int(msg.metadata.sequence.stream)
            digests[seq] = hashlib.sha256(msg.subject.encode() + b"\0" + msg.data).hexdigest()
            if seq >= last:
                return digests
    finally:
        await sub.unsubscribe()
