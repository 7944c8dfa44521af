"""A real Redis Cluster for the tests: three masters with one replica each, from Debian's
``redis-server``, on free 127.0.0.1 ports; created with ``redis-cli --cluster create``.

The fixture (``redis_cluster`` in tests/conftest.py) starts it once per session, so the suite
pays its ~2 s once; tests that kill a master restore the cluster's shape before they end
(:meth:`RedisCluster.restart` brings the node back as a replica of its successor).
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


@functools.cache
def keys_by_slot() -> dict[int, str]:
    """A key of each slot, to write to a given master (made on first use: ~0.1 s)."""
    keys: dict[int, str] = {}
    n = 0
    while len(keys) < 16384:
        key = f"probe:{n}"
        keys.setdefault(key_slot(key.encode()), key)
        n += 1
    return keys


#: Milliseconds before a silent node is suspected failing: small, so a failover takes ~2 s.
NODE_TIMEOUT_MS = 1000


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free now on 127.0.0.1 (clients and cluster buses)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class Node:
    port: int
    bus_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **options: Any) -> redis.Redis:
        options.setdefault("socket_timeout", 5)
        return redis.Redis(host="127.0.0.1", port=self.port, **options)

    def start(self) -> None:
        # Never skipped: CI installs Debian's redis-server, and a missing one must fail.
        self.process = subprocess.Popen(
            [
                *(REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--cluster-enabled", "yes", "--cluster-port", str(self.bus_port)),
                *("--cluster-config-file", "nodes.conf"),
                *("--cluster-node-timeout", str(NODE_TIMEOUT_MS)),
                # A replica too long out of touch would refuse to take over; not here.
                *("--cluster-replica-validity-factor", "0"),
                # Replicas sync at once (7.0 waits 5 s for more replicas by default).
                *("--repl-diskless-sync-delay", "0"),
                *("--save", "", "--appendonly", "no"),
                *("--dir", str(self.directory), "--loglevel", "warning"),
            ],
            stdout=subprocess.DEVNULL,
        )

    def wait_answers(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, "node exited"
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        raise AssertionError(f"redis-server on {self.port} did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self.process = None

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as client:
            return dict(client.info(section))

    def cluster_state(self) -> str:
        with self.client() as client:
            text = client.execute_command("CLUSTER", "INFO").decode()
        return dict(line.split(":", 1) for line in text.split())["cluster_state"]


class RedisCluster:
    """Six redis-server processes forming three shards (a master and a replica each)."""

    def __init__(self, directory: Path) -> None:
        ports = free_ports(12)
        self.nodes = [Node(ports[i], ports[i + 6], directory / f"node{i}") for i in range(6)]

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming every node (any one would do)."""
        return "redis+cluster://" + ",".join(node.address for node in self.nodes)

    def start(self) -> None:
        try:
            for node in self.nodes:
                node.directory.mkdir(parents=True, exist_ok=True)
                node.start()
            for node in self.nodes:
                node.wait_answers()
            subprocess.run(
                [
                    REDIS_CLI,
                    "--cluster",
                    "create",
                    *(node.address for node in self.nodes),
                    *("--cluster-replicas", "1", "--cluster-yes"),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                timeout=30,
            )
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()

    def node(self, address: str) -> Node:
        return next(node for node in self.nodes if node.address == address)

    def running(self) -> list[Node]:
        return [node for node in self.nodes if node.process is not None]

    def topology(self, via: Node | None = None) -> list[dict[str, Any]]:
        """``CLUSTER NODES`` as a running node sees it: id, node, flags, master id, slots."""
        with (via or self.running()[0]).client() as client:
            text = client.execute_command("CLUSTER", "NODES").decode()
        entries = []
        for line in text.splitlines():
            fields = line.split()
            address = fields[1].split("@")[0]
            entries.append(
                {
                    "id": fields[0],
                    "node": self.node(address),
                    "flags": set(fields[2].split(",")),
                    "master": fields[3],
                    "slots": fields[8:],
                }
            )
        return entries

    def node_id(self, node: Node) -> str:
        with node.client() as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())

    def masters(self) -> list[Node]:
        """The nodes that serve slots now."""
        return [
            entry["node"]
            for entry in self.topology()
            if "master" in entry["flags"] and "fail" not in entry["flags"] and entry["slots"]
        ]

    def replica_of(self, master: Node) -> Node:
        """The replica of ``master``."""
        entries = self.topology()
        master_id = next(entry["id"] for entry in entries if entry["node"] is master)
        return next(
            entry["node"]
            for entry in entries
            if entry["master"] == master_id and "fail" not in entry["flags"]
        )

    def master_of(self, key: str) -> Node:
        """The master serving ``key``'s slot."""
        with self.running()[0].client() as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return self.node(f"{master[0].decode()}:{master[1]}")
        raise AssertionError(f"no master serves {key!r}")

    def wait_healthy(self, timeout: float = 20.0) -> None:
        """Wait until every running node says ``cluster_state:ok`` and each of the three
        masters has an online replica that has caught up."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._healthy():
                    return
            except (redis.RedisError, OSError):
                pass
            assert time.monotonic() < deadline, "the cluster did not become healthy"
            time.sleep(0.05)

    def _healthy(self) -> bool:
        for node in self.running():
            if node.cluster_state() != "ok":
                return False
        views = set()
        for node in self.running():  # every node sees the same roles, and no running one failing
            view = frozenset(
                (entry["id"], "master" in entry["flags"], entry["master"], tuple(entry["slots"]))
                for entry in self.topology(via=node)
                if entry["node"].process is not None
            )
            if any(entry[1] and not entry[3] for entry in view):
                return False  # a master without slots: roles are still changing
            views.add(view)
            if any(
                entry["flags"] & {"fail", "fail?"}
                for entry in self.topology(via=node)
                if entry["node"].process is not None
            ):
                return False
        if len(views) != 1:
            return False
        masters = self.masters()
        if len(masters) != 3:
            return False
        for master in masters:
            # The replica streams: a write is acknowledged by it (after a full sync the
            # master waits for the replica's first ACK, up to a second, before streaming).
            with master.client() as client:
                slot = next(iter(self.slots(master)))
                client.set(keys_by_slot()[slot], "probe")
                if client.execute_command("WAIT", 1, 100) != 1:
                    return False
        return True

    def slots(self, master: Node) -> list[int]:
        with master.client() as client:
            return [
                slot
                for start, end, owner, *_ in client.execute_command("CLUSTER", "SLOTS")
                if int(owner[1]) == master.port
                for slot in range(int(start), int(end) + 1)
            ]

    def restart(self, node: Node) -> None:
        """Start a killed node again (it rejoins as a replica) and wait for a healthy
        cluster."""
        assert node.process is None
        node.start()
        node.wait_answers()
        self.wait_healthy()

    def pause(self, node: Node) -> None:
        """Freeze a node (SIGSTOP): it neither reads nor answers until :meth:`resume`."""
        assert node.process is not None
        node.process.send_signal(signal.SIGSTOP)

    def resume(self, node: Node) -> None:
        assert node.process is not None
        node.process.send_signal(signal.SIGCONT)

    def cut_replication(self, master: Node) -> None:
        """Close the master's connection to its replica (which reconnects unless paused)."""
        with master.client() as client:
            client.execute_command("CLIENT", "KILL", "TYPE", "replica")

    def wait_replicated(self, master: Node, timeout: float = 5.0) -> None:
        """Wait until the master's replica has every write the master has."""
        deadline = time.monotonic() + timeout
        while True:
            replication = master.info("replication")
            replica = replication.get("slave0")
            if isinstance(replica, dict) and int(replica["offset"]) == int(
                replication["master_repl_offset"]
            ):
                return
            assert time.monotonic() < deadline, "the replica did not catch up"
            time.sleep(0.01)

    def takeover(self, replica: Node) -> None:
        """Promote a replica at once, without the failed master's agreement."""
        with replica.client() as client:
            client.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
        self.wait_master(replica)

    def wait_master(self, node: Node, timeout: float = 15.0) -> None:
        """Wait until every running node sees ``node`` as a master serving slots, and says
        ``cluster_state:ok``."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(redis.RedisError, OSError):
                if node in self.masters() and all(
                    n.cluster_state() == "ok" for n in self.running()
                ):
                    return
            assert time.monotonic() < deadline, f"{node.address} did not become a master"
            time.sleep(0.02)
