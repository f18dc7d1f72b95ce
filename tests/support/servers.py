"""Real servers for the tests, started as subprocesses: redis-server, nx-27017, the embedding-api."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis
import requests

from vecsync_local.stack import mongo_standin_command, redis_server_binary

BIN = Path(sys.executable).parent


def _ephemeral_ports() -> range:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


# Servers listen below the kernel's ephemeral range: a port taken from it can be handed to an outgoing connection
# (a Redis client's) while its server is down, and a stage restarted on it would then find it in use.
LISTEN_PORTS = range(20000, _ephemeral_ports().start)


def free_port() -> int:
    for _ in range(1000):
        port = random.choice(LISTEN_PORTS)
        if _is_free(port):
            return port
    raise RuntimeError(f"no free port in {LISTEN_PORTS}")


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive free ports (the embedder-workers' metrics ports are such a run)."""
    for _ in range(100):
        base = free_port()
        if base + count <= 65536 and all(_is_free(base + offset) for offset in range(1, count)):
            return base
    raise RuntimeError(f"no run of {count} free ports found")


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_for(predicate: Callable[[], object], *, timeout: float = 30.0, interval: float = 0.05, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what or predicate}")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Server:
    """A subprocess listening on a port, stopped with SIGTERM (then SIGKILL) on close."""

    def __init__(self, args: list[str], port: int, *, log: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.port = port
        self.log = log
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Server:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        wait_for(self._ready, timeout=timeout, what=f"{self.args[0]} on port {self.port} (log: {self.log})")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.args[0]} exited with {self.process.returncode}; see {self.log}")
        return port_open(self.port)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_redis(workdir: Path, *extra_args: str) -> Server:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)]
    args += ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec", *extra_args]
    return Server(args, port, log=workdir / "redis.log").start()


class RedisCluster:
    """A real Redis Cluster on local ports: three masters, each with a replica."""

    def __init__(self, nodes: list[Server]) -> None:
        self.nodes = nodes

    @property
    def url(self) -> str:
        """What REDIS_URL names: any one node; the cluster client finds the others."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def node(self, port: int) -> Server:
        return next(node for node in self.nodes if node.port == port)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def master_of(self, slot: int) -> int:
        """The port of the master that serves ``slot`` now."""
        for start, end, master, *_replicas in self.client(self._alive()[0]).execute_command("CLUSTER SLOTS"):
            if int(start) <= slot <= int(end):
                return int(master[1])
        raise LookupError(f"no master serves slot {slot}")

    def replica_of(self, master: int) -> int:
        """The port of the replica of the master on port ``master``."""
        return next(
            node.port
            for node in self.nodes
            if node.port != master
            and node.process is not None
            and node.process.poll() is None
            and int(self.client(node.port).info("replication").get("master_port", 0)) == master
        )

    def fail_over(self, slot: int) -> tuple[int, int]:
        """A manual CLUSTER FAILOVER of the master of ``slot`` to its replica, as an operator makes one; returns
        (old master, new master) once every node agrees and the cluster is ok again."""
        old = self.master_of(slot)
        replica = self.replica_of(old)
        self.client(replica).execute_command("CLUSTER FAILOVER")
        self._wait_until_master(replica, slot)
        return old, replica

    def take_over(self, replica: int) -> None:
        """CLUSTER FAILOVER TAKEOVER on the replica on port ``replica``: it becomes master without its master's
        agreement or the other masters' vote, as after its master died; returns once the cluster is ok again."""
        slot = self._slot_of_master(int(self.client(replica).info("replication")["master_port"]))
        self.client(replica).execute_command("CLUSTER FAILOVER TAKEOVER")
        self._wait_until_master(replica, slot)

    def _slot_of_master(self, master: int) -> int:
        for start, _end, node, *_replicas in self.client(self._alive()[0]).execute_command("CLUSTER SLOTS"):
            if int(node[1]) == master:
                return int(start)
        raise LookupError(f"the node on port {master} serves no slot")

    def _alive(self) -> list[int]:
        return [node.port for node in self.nodes if node.process is not None and node.process.poll() is None]

    def _wait_until_master(self, replica: int, slot: int) -> None:
        wait_for(
            lambda: (
                all(
                    self.client(port).execute_command("CLUSTER INFO")["cluster_state"] == "ok" for port in self._alive()
                )
                and self.master_of(slot) == replica
            ),
            timeout=60,
            what=f"the failover of slot {slot} to the node on port {replica}",
        )

    @staticmethod
    def client(port: int) -> redis.Redis:
        """A plain client of the one node on port ``port``."""
        return redis.Redis(port=port, decode_responses=True, socket_timeout=10)


def _cluster_node_port() -> int:
    """A free port whose cluster bus port (10,000 higher) is free too, and so at most 55,535."""
    for _ in range(1000):
        port = free_port()
        if port <= 55_535 and _is_free(port + 10_000):
            return port
    raise RuntimeError("no free port for a Redis Cluster node and its bus")


def start_redis_cluster(workdir: Path, *, masters: int = 3) -> RedisCluster:
    """Debian's redis-server as a cluster of ``masters`` masters with one replica each, created by redis-cli."""
    nodes = []
    for index in range(masters * 2):
        folder = workdir / f"node-{index}"
        folder.mkdir(parents=True, exist_ok=True)
        port = _cluster_node_port()
        args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
        args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"]
        args += ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"]
        nodes.append(Server(args, port, log=folder / "redis.log").start())
    cluster = RedisCluster(nodes)
    redis_cli = shutil.which("redis-cli") or "redis-cli"
    addresses = [f"127.0.0.1:{node.port}" for node in nodes]
    subprocess.run(
        [redis_cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=60,
    )

    def ready() -> bool:
        for node in nodes:
            info = subprocess.run(
                [redis_cli, "-p", str(node.port), "cluster", "info"], capture_output=True, text=True, timeout=10
            ).stdout
            if "cluster_state:ok" not in info:
                return False
            # A replica holds its master's data only once its first sync is done (the master waits
            # repl-diskless-sync-delay before it starts one): a failover before that loses everything.
            replication = cluster.client(node.port).info("replication")
            if replication["role"] == "slave" and (
                replication["master_link_status"] != "up" or replication["master_sync_in_progress"]
            ):
                return False
        return True

    wait_for(ready, timeout=60, what="the Redis Cluster to be ready")
    return cluster


def start_mongo(workdir: Path) -> Server:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    # Launched as the embedded default launches it, so the tests exercise what users run.
    # Its own pid and log files: by default every instance shares one pid file and refuses to start twice.
    args = mongo_standin_command(workdir / "mongo.sqlite", port)
    args += ["--pid-file", str(workdir / "mongo.pid"), "--log-file", str(workdir / "mongo-server.log")]
    return Server(args, port, log=workdir / "mongo.log").start()


def start_embedding_api(
    workdir: Path,
    backend: str,
    port: int | None = None,
    *,
    ready_timeout: float = 30.0,
    wait_ready: bool = True,
    **settings: str,
) -> Server:
    """The embedding-api on the CPU, once /readyz answers (or, without ``wait_ready``, once its port is open, while
    it may still load its model); ``settings`` are further environment variables."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "EMBEDDING_BACKEND": backend, "PORT": str(port), "HOST": "127.0.0.1", "DEVICE": "cpu"}
    server = Server(
        [str(BIN / "vecsync-embedding-api")], port, log=workdir / f"embedding-{backend}.log", env=env | settings
    )
    server.start(timeout=120)
    if not wait_ready:
        return server
    wait_for(
        lambda: requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).ok,
        timeout=ready_timeout,
        what="embedding-api ready",
    )
    return server
