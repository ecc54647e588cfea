"""A real Redis Cluster for the tests: six redis-server processes (three primaries, one replica each),
`cluster-enabled yes`, a short node timeout, free ports, joined by `redis-cli --cluster create`."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from tests.harness.servers import free_port

NODE_TIMEOUT_MS = 1500
"""Short, so a killed primary's replica takes over in about two seconds; long enough that a node
busy for a few hundred milliseconds on the shared machine is not failed over by mistake."""


ORPHAN_GRACE_S = 5.0
"""How long a node may stay an empty primary before the fixture attaches it as a replica itself:
long enough for redis-cli's own CLUSTER REPLICATE and for a restarted node to rejoin by itself."""


class LocalCluster:
    """Start, inspect, break and repair a six-node cluster the tests own."""

    def __init__(self, directory: Path, nodes: int = 6):
        self.directory = directory
        self.ports = [free_port() for _ in range(nodes)]
        self.bus_ports = {port: free_port() for port in self.ports}
        self.processes: dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        """The proxy's URL for it: two seeds, either enough."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]},127.0.0.1:{self.ports[1]}"

    def start(self) -> "LocalCluster":
        for binary in ("redis-server", "redis-cli"):
            if shutil.which(binary) is None:
                raise RuntimeError(f"{binary} is not installed (make install puts it there)")
        for port in self.ports:
            self.start_node(port)
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports),
                        "--cluster-replicas", "1", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        self.wait_healthy()
        return self

    def start_node(self, port: int) -> None:
        """Start (or restart, with its nodes.conf: it rejoins) the node on `port`."""
        directory = self.directory / str(port)
        directory.mkdir(exist_ok=True)
        self.processes[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-port", str(self.bus_ports[port]), "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--enable-debug-command", "local", "--save", "", "--appendonly", "no",
             "--dir", str(directory), "--logfile", str(directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        node = self.node(port)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                # ours, not another test process's server that took the port first (ours then exits)
                if node.info("server")["process_id"] == self.processes[port].pid:
                    return
            except redis.RedisError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {port}")

    def node(self, port: int) -> redis.Redis:
        """A plain client of one node."""
        return redis.Redis(port=port, decode_responses=True, socket_timeout=5)

    def until_busy(self, port: int, timeout: float = 5.0) -> None:
        """Until the node on `port` leaves two PINGs in a row unanswered for 0.2 s each (a DEBUG
        SLEEP sent from another thread has begun): a thread's command may reach the node long after
        the thread was started on a loaded machine, and one slow answer alone is no proof."""
        # no retry: redis-py retries a timed-out command by default, and the retry waits out the sleep
        probe = redis.Redis(port=port, socket_timeout=0.2, retry=Retry(NoBackoff(), 0))
        deadline = time.monotonic() + timeout
        unanswered = 0
        try:
            while time.monotonic() < deadline:
                try:
                    probe.ping()
                    unanswered = 0
                    time.sleep(0.01)
                except (redis.TimeoutError, redis.ConnectionError):  # a new connection's handshake times out too
                    unanswered += 1
                    if unanswered == 2:
                        return
        finally:
            probe.close()
        raise RuntimeError(f"node {port} still answers after {timeout} s")

    def alive(self) -> list[int]:
        return [port for port, process in self.processes.items() if process.poll() is None]

    def client(self) -> RedisCluster:
        """A cluster client for the test's own reads and writes."""
        return RedisCluster(host="127.0.0.1", port=self.alive()[0], decode_responses=True)

    def _nodes(self) -> list[tuple[str, int, set[str], str, bool, list[str]]]:
        """CLUSTER NODES as a live node sees it: (id, port, flags, primary id, up, slots) per node."""
        text = self.node(self.alive()[0]).execute_command("CLUSTER", "NODES")
        rows = []
        for line in text.splitlines():
            node_id, address, flags, primary_id, _, _, _, link, *slots = line.split()
            rows.append((node_id, int(address.split("@")[0].rsplit(":", 1)[1]), set(flags.split(",")),
                         primary_id, link == "connected" and "fail" not in flags and "fail?" not in flags, slots))
        return rows

    def topology(self, rows: list | None = None) -> dict[int, list[int]]:
        """Primary port -> its replicas' ports, as a live node sees it (failed nodes left out)."""
        rows = self._nodes() if rows is None else rows
        ports = {node_id: port for node_id, port, *_ in rows}
        primaries = {port: [] for _, port, flags, _, up, slots in rows if "master" in flags and up and slots}
        for _, port, flags, primary_id, up, _ in rows:
            if "slave" in flags and up and ports.get(primary_id) in primaries:
                primaries[ports[primary_id]].append(port)
        return primaries

    def owner(self, key: str) -> int:
        """The port of the primary that holds `key`'s slot."""
        return self.slot_owner(key_slot(key.encode()))

    def slot_owner(self, slot: int) -> int:
        """The port of the primary that holds `slot`, as a live node sees it."""
        for start, end, primary, *_ in self.node(self.alive()[0]).execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(primary[1])
        raise AssertionError(f"slot {slot} has no owner")

    def replica_of(self, primary: int) -> int:
        return self.topology()[primary][0]

    def node_id(self, port: int) -> str:
        return self.node(port).execute_command("CLUSTER", "MYID")

    def begin_migration(self, slot: int, target: int) -> int:
        """Mark `slot` migrating from its owner to `target` (keys stay where they are); the source."""
        source = self.slot_owner(slot)
        self.node(target).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        self.node(source).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))
        return source

    def end_migration(self, slot: int, source: int, target: int) -> None:
        """Move the slot's remaining keys and give the slot to `target` (what `redis-cli --cluster reshard` does)."""
        while keys := self.node(source).execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            self.node(source).execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        for port in self.primaries():
            self.node(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", self.node_id(target))

    def move_slot(self, slot: int, target: int) -> None:
        """Migrate one slot to `target`, keys and all."""
        source = self.begin_migration(slot, target)
        self.end_migration(slot, source, target)

    def wait_agreed(self, port: int, timeout: float = 30.0) -> None:
        """Until `redis-cli --cluster check` finds every node agreeing on the slots and none open: a
        slot moved by hand reaches the replicas by gossip, and redis-cli refuses to reshard while a
        node still disagrees ("Please fix your cluster problems")."""
        deadline = time.monotonic() + timeout
        while True:
            check = subprocess.run(["redis-cli", "--cluster", "check", f"127.0.0.1:{port}"],
                                   capture_output=True, text=True, timeout=30, check=False)
            if check.returncode == 0 and "[OK] All nodes agree about slots configuration." in check.stdout:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster nodes still disagree after {timeout} s:\n{check.stdout[-2000:]}")
            time.sleep(0.2)

    def wait_failover(self, killed: int, timeout: float = 30.0) -> int:
        """Until the killed primary's replica has taken its slots and the cluster is ok; the new primary."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                states = [self.node(port).execute_command("CLUSTER", "INFO") for port in self.alive()]
                topology = self.topology()
            except redis.RedisError:
                time.sleep(0.1)
                continue
            if all("cluster_state:ok" in state for state in states) and killed not in topology and len(topology) == 3:
                promoted = [port for port in topology if not topology[port]]
                return promoted[0] if promoted else -1
            time.sleep(0.1)
        raise RuntimeError(f"no failover of {killed} within {timeout} s")

    def primaries(self) -> list[int]:
        return sorted(self.topology())

    def cut_replication(self, primary: int) -> int:
        """Cut the primary's replica off (its link dropped, its reconnection refused at AUTH): writes
        from now on reach the primary alone. `repair` undoes it. The replica's port."""
        replica = self.replica_of(primary)
        self.node(replica).config_set("masteruser", "cut-off")
        self.node(replica).config_set("masterauth", "cut-off")
        self.node(primary).execute_command("CLIENT", "KILL", "TYPE", "replica")
        return replica

    def kill(self, port: int) -> None:
        """SIGKILL one node: no shutdown, no last write to its replica."""
        process = self.processes[port]
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def wait_healthy(self, timeout: float = 60.0, primaries: int = 3) -> None:
        """Until every live node says cluster_state:ok, `primaries` primaries own slots, each has an
        online replica that every node lists to clients, and the replicas are in sync (so a failover
        now loses nothing it was sent).
        A node left an empty primary for a few seconds is made the replica of a primary without one."""
        started = time.monotonic()
        deadline = started + timeout
        problem = "not checked"
        while time.monotonic() < deadline:
            try:
                problem = self._health_problem(primaries)
            except redis.RedisError as exc:
                problem = repr(exc)
            if problem is not None and time.monotonic() - started > ORPHAN_GRACE_S:
                try:
                    self._attach_orphans()
                except redis.RedisError:  # the topology moved under us: the next round looks again
                    pass
            if problem is None:
                return
            time.sleep(0.1)
        try:
            nodes = self.node(self.alive()[0]).execute_command("CLUSTER", "NODES")
        except redis.RedisError as exc:
            nodes = repr(exc)
        raise RuntimeError(f"redis cluster not healthy after {timeout} s: {problem}\nCLUSTER NODES:\n{nodes}")

    def _attach_orphans(self) -> None:
        """`redis-cli --cluster create` ignores a failed CLUSTER REPLICATE (a replica that did not yet
        know its primary from the gossip): the node stays an empty primary for good. Attach each such
        node to a primary that has no replica, as redis-cli meant to."""
        rows = self._nodes()
        alive = set(self.alive())
        empty = [port for _, port, flags, _, up, slots in rows if "master" in flags and up and not slots and port in alive]
        by_port = {port: node_id for node_id, port, *_ in rows}
        lonely = [primary for primary, replicas in self.topology(rows).items() if not replicas]
        for orphan, primary in zip(empty, lonely):
            self.node(orphan).execute_command("CLUSTER", "REPLICATE", by_port[primary])

    def _health_problem(self, primaries: int) -> str | None:
        for port in self.alive():
            state = self.node(port).execute_command("CLUSTER", "INFO")
            if "cluster_state:ok" not in state:
                return f"{port}: {state.splitlines()[0]}"
        topology = self.topology()
        if len(topology) != primaries:
            return f"primaries {sorted(topology)}"
        for primary, replicas in topology.items():
            if not replicas:
                return f"{primary} has no replica"
            info = self.node(primary).info("replication")
            if info.get("connected_slaves", 0) < 1 or info.get("slave0", {}).get("state") != "online":
                return f"{primary}'s replica is not online"
        # what a client reads: Redis lists a replica in CLUSTER SLOTS only once the node asked has
        # heard (by gossip) that it synced, seconds after CLUSTER NODES shows it
        for port in self.alive():
            for start, _, primary, *replicas in self.node(port).execute_command("CLUSTER", "SLOTS"):
                if not replicas:
                    return f"{port}'s CLUSTER SLOTS lists no replica of {primary[1]} (slot {start})"
        return None

    def repair(self) -> None:
        """Restart every killed node (it rejoins as a replica) and wait until the cluster is whole."""
        for port, process in self.processes.items():
            if process.poll() is not None:
                self.start_node(port)
            else:
                self.node(port).config_set("masteruser", "")
                self.node(port).config_set("masterauth", "")
        self.wait_healthy()

    def flushall(self) -> None:
        for port in self.primaries():
            self.node(port).flushall()
            self.node(port).script_flush()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


_ARGUMENT = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _unquote(text: str) -> str:
    return re.sub(r"\\x([0-9a-f]{2})|\\(.)",
                  lambda m: chr(int(m[1], 16)) if m[1] else {"n": "\n", "r": "\r", "t": "\t"}.get(m[2], m[2]), text)


class CommandAudit:
    """Every command every primary runs (MONITOR on each), scripts' own commands included, for a
    check that knows no command names: the server itself (COMMAND GETKEYS) says which arguments are
    keys, so whatever key family or command the proxy starts using is covered."""

    def __init__(self, cluster: LocalCluster):
        self.cluster = cluster
        self.commands: list[tuple[int, str, tuple[str, ...]]] = []
        """(node port, client: "lua" for a script's own commands, arguments)."""
        self._monitors = []
        self._threads = []
        for port in cluster.primaries():
            # a long read timeout: a node may have nothing to run for a while (redis-py's default is 5 s)
            monitor = redis.Redis(port=port, decode_responses=True, socket_timeout=3600).monitor().__enter__()
            self._monitors.append(monitor)
            thread = threading.Thread(target=self._run, args=(port, monitor), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self, port: int, monitor) -> None:
        while True:
            try:
                line = monitor.connection.read_response()
            except (redis.ConnectionError, OSError, ValueError):
                return
            if isinstance(line, bytes):
                line = line.decode(errors="replace")
            header, _, arguments = line.partition("] ")
            client = header.rsplit(" ", 1)[-1]
            self.commands.append((port, client, tuple(_unquote(a) for a in _ARGUMENT.findall(arguments))))

    def stop(self) -> list[tuple[int, str, tuple[str, ...]]]:
        for monitor in self._monitors:
            monitor.connection.disconnect()
        for thread in self._threads:
            thread.join(5)
        return self.commands

    def cluster_risks(self) -> list[str]:
        """Commands Redis Cluster could refuse or that break the layout's promise: keys in more than
        one hash slot, a transaction, a command the server cannot name the keys of."""
        node = self.cluster.node(self.cluster.alive()[0])
        risky = []
        shapes = list(dict.fromkeys(args for _, _, args in self.commands if args))
        for args in shapes:
            name = args[0].upper()
            if name in ("MULTI", "EXEC", "WATCH"):
                risky.append(f"transaction: {name}")
                continue
            try:
                keys = node.command_getkeys(*args)
            except redis.ResponseError as exc:
                if "no key arguments" in str(exc) or name in _KEYLESS:
                    continue
                risky.append(f"{' '.join(args)[:100]}: {exc}")
                continue
            if len({key_slot(key.encode() if isinstance(key, str) else key) for key in keys}) > 1:
                risky.append(f"cross-slot: {' '.join(args)[:100]}")
        return risky


# Commands that take no key and that COMMAND GETKEYS refuses rather than answering "no key arguments".
_KEYLESS = {"PING", "HELLO", "CLIENT", "SCRIPT", "INFO", "COMMAND", "CLUSTER", "WAIT", "ASKING", "READONLY"}
