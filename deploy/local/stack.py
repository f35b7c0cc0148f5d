#!/usr/bin/env python3
"""Local service stack for anomaly_stream: one Apache Kafka broker (KRaft), Redis and an
Ethereum JSON-RPC node (ganache, in memory: a fresh chain on every start).

Stdlib only, because it runs before any virtualenv exists.

    python3 deploy/local/stack.py up             # start what is not running, wait, print endpoints
    python3 deploy/local/stack.py down           # stop all three and check nothing listens any more
    python3 deploy/local/stack.py status         # exit 0 if all answer, else 1
    python3 deploy/local/stack.py restart-kafka  # stop and start only the broker, keeping its data

Environment variables (defaults in brackets):
    KAFKA_VERSION                [3.9.1]  Apache Kafka release from Maven Central; major 4
                                          uses the pom's kafka4 profile and log4j2, major 3
                                          kafka3 and log4j 1.
    STACK_KAFKA_PORT             [19092]  broker listener on 127.0.0.1
    STACK_KAFKA_CONTROLLER_PORT  [19093]  KRaft controller listener on 127.0.0.1
    STACK_KAFKA_SASL_PORT        [19094]  second broker listener, SASL_PLAINTEXT with SCRAM-SHA-512:
                                          user anomaly-stream, its password generated once into
                                          $STACK_DIR/kafka/sasl-password (printed by `up`)
    STACK_REDIS_PORT             [16379]  Redis on 127.0.0.1
    STACK_ETH_PORT               [18545]  ganache JSON-RPC (HTTP and WebSocket) on 127.0.0.1
    GANACHE_VERSION              [7.9.2]  ganache release from the npm registry
    GANACHE_CACHE                [${XDG_CACHE_HOME:-~/.cache}/anomaly-stream/ganache-<version>]
                                          installed once with npm into <cache>/node_modules
    STACK_DIR                    [<repo>/.stack]  data dirs, logs, pid files, generated config
    KAFKA_JARS_CACHE             [${XDG_CACHE_HOME:-~/.cache}/anomaly-stream/kafka-<version>]
                                          broker jars live in <cache>/libs, resolved once by Maven
    STACK_READY_TIMEOUT          [90]     seconds to wait for a service to answer

Every `up` that starts a broker formats a fresh data dir (tests want fresh state);
`restart-kafka` keeps it. Logs are in $STACK_DIR/logs. The SCRAM user is created when
the storage is formatted (`--add-scram`), so it costs no extra start-up time; the
PLAINTEXT listener stays open to anyone on loopback for the rest of the suite.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
HOST = "127.0.0.1"
SASL_USERNAME = "anomaly-stream"  # the local SCRAM-SHA-512 user of the SASL listener
KAFKA_STOP_TIMEOUT = 30.0  # a controlled shutdown of a single node takes a few seconds
REDIS_STOP_TIMEOUT = 10.0
GANACHE_STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Config:
    """Everything the environment decides, resolved once."""

    kafka_version: str
    kafka_port: int
    controller_port: int
    redis_port: int
    stack_dir: Path
    jars_cache: Path
    ready_timeout: float
    eth_port: int = 18545
    sasl_port: int = 19094
    ganache_version: str = "7.9.2"
    ganache_cache: Path = Path("ganache")

    @classmethod
    def from_env(cls) -> Config:
        env = os.environ
        version = env.get("KAFKA_VERSION", "3.9.1")
        xdg_cache = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        default_cache = xdg_cache / "anomaly-stream" / f"kafka-{version}"
        ganache_version = env.get("GANACHE_VERSION", "7.9.2")
        default_ganache_cache = xdg_cache / "anomaly-stream" / f"ganache-{ganache_version}"
        return cls(
            kafka_version=version,
            kafka_port=int(env.get("STACK_KAFKA_PORT", "19092")),
            controller_port=int(env.get("STACK_KAFKA_CONTROLLER_PORT", "19093")),
            redis_port=int(env.get("STACK_REDIS_PORT", "16379")),
            stack_dir=Path(env.get("STACK_DIR") or REPO / ".stack").resolve(),
            jars_cache=Path(env.get("KAFKA_JARS_CACHE") or default_cache).resolve(),
            ready_timeout=float(env.get("STACK_READY_TIMEOUT", "90")),
            eth_port=int(env.get("STACK_ETH_PORT", "18545")),
            sasl_port=int(env.get("STACK_KAFKA_SASL_PORT", "19094")),
            ganache_version=ganache_version,
            ganache_cache=Path(env.get("GANACHE_CACHE") or default_ganache_cache).resolve(),
        )

    @property
    def kafka_major(self) -> int:
        return int(self.kafka_version.split(".")[0])

    @property
    def libs(self) -> Path:
        return self.jars_cache / "libs"

    @property
    def kafka_dir(self) -> Path:
        return self.stack_dir / "kafka"

    @property
    def redis_dir(self) -> Path:
        return self.stack_dir / "redis"

    @property
    def logs_dir(self) -> Path:
        return self.stack_dir / "logs"

    @property
    def kafka_pidfile(self) -> Path:
        return self.kafka_dir / "kafka.pid"

    @property
    def kafka_version_file(self) -> Path:
        return self.kafka_dir / "version"

    @property
    def sasl_password_file(self) -> Path:
        return self.kafka_dir / "sasl-password"

    @property
    def kafka_ports(self) -> list[int]:
        return [self.kafka_port, self.sasl_port, self.controller_port]

    @property
    def redis_pidfile(self) -> Path:
        return self.redis_dir / "redis.pid"

    @property
    def ganache_dir(self) -> Path:
        return self.stack_dir / "ganache"

    @property
    def ganache_pidfile(self) -> Path:
        return self.ganache_dir / "ganache.pid"

    @property
    def ganache_bin(self) -> Path:
        return self.ganache_cache / "node_modules" / ".bin" / "ganache"

    @property
    def eth_url(self) -> str:
        return f"http://{HOST}:{self.eth_port}"


class StackError(Exception):
    """A failure the user must see; main() prints it and exits non-zero."""


def log(message: str) -> None:
    print(f"[stack] {message}", flush=True)


# --------------------------------------------------------------------------- readiness probes


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    """Read exactly n bytes; a short read means the peer closed, i.e. not ready."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        buf += chunk
    return bytes(buf)


def kafka_brokers(port: int, timeout: float = 2.0) -> list[tuple[int, str, int]]:
    """Ask the broker for cluster metadata (Metadata v1) and return its (node_id, host, port) list.

    An open port is not enough: a KRaft broker accepts connections before it has
    registered and been unfenced, and only then does it list itself in metadata.
    Written by hand with struct because the stack must not need kafka clients.
    """
    client_id = b"stack.py"
    correlation_id = 7
    header = struct.pack(">hhih", 3, 1, correlation_id, len(client_id)) + client_id
    body = struct.pack(">i", -1)  # null topics array: no topic auto-creation, all topics
    request = header + body
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        response = _recv_exact(sock, size)

    offset = 0

    def take(fmt: str) -> tuple:
        nonlocal offset
        values = struct.unpack_from(fmt, response, offset)
        offset += struct.calcsize(fmt)
        return values

    def take_string() -> str | None:
        nonlocal offset
        (length,) = take(">h")
        if length < 0:
            return None
        text = response[offset : offset + length].decode()
        offset += length
        return text

    (got_correlation_id, broker_count) = take(">ii")
    if got_correlation_id != correlation_id:
        raise ConnectionError(f"unexpected correlation id {got_correlation_id}")
    brokers = []
    for _ in range(broker_count):
        (node_id,) = take(">i")
        host = take_string() or ""
        (broker_port,) = take(">i")
        take_string()  # rack
        brokers.append((node_id, host, broker_port))
    return brokers


def kafka_ready(cfg: Config) -> bool:
    """True once the broker answers metadata and lists at least one broker."""
    try:
        return bool(kafka_brokers(cfg.kafka_port))
    except (OSError, struct.error):
        return False


def redis_ready(cfg: Config) -> bool:
    """True if Redis answers PING with +PONG (it refuses commands while loading)."""
    try:
        with socket.create_connection((HOST, cfg.redis_port), timeout=2.0) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def eth_block_number(port: int, timeout: float = 2.0) -> int:
    """eth_blockNumber over HTTP JSON-RPC: an answer means the node serves requests."""
    request = urllib.request.Request(
        f"http://{HOST}:{port}", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}).encode(),
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return int(json.loads(resp.read())["result"], 16)


def eth_ready(cfg: Config) -> bool:
    try:
        eth_block_number(cfg.eth_port)
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


# --------------------------------------------------------------------------- processes and ports


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """True if pid runs and is not a zombie; reaps it first if it is our own child."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def owned_pid(pidfile: Path, marker: str) -> int | None:
    """The pid in pidfile if that process is alive and still ours (guards against pid reuse)."""
    pid = read_pid(pidfile)
    if pid and pid_alive(pid) and marker in cmdline(pid):
        return pid
    return None


def listening_inodes(port: int) -> set[str]:
    """Socket inodes of TCP listeners on port, from /proc/net/tcp{,6} (state 0A = LISTEN)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(inode)
    return inodes


def port_holders(port: int) -> set[int]:
    """Pids holding a listening socket on port, found by matching socket inodes in /proc/*/fd.

    Used when pid files are lost; unlike fuser it needs no extra package and reads
    the same kernel tables ss does.
    """
    inodes = {f"socket:[{inode}]" for inode in listening_inodes(port)}
    if not inodes:
        return set()
    holders = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        holders.add(int(proc.name))
                        break
    return holders


def terminate(pids: set[int], timeout: float) -> None:
    """SIGTERM, wait up to timeout for a clean exit, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        alive = {pid for pid in pids if pid_alive(pid)}
        if not alive:
            return
        if sig == signal.SIGKILL:
            log(f"still running after {timeout:.0f} s, sending SIGKILL to {sorted(alive)}")
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(pid_alive(pid) for pid in alive):
            time.sleep(0.1)
    if any(pid_alive(pid) for pid in pids):
        raise StackError(f"processes {sorted(pids)} survived SIGKILL")


def stop_service(name: str, pidfile: Path, marker: str, ports: list[int], timeout: float) -> None:
    """Stop a service by its pid file, then anything still listening on its ports."""
    pids = set()
    pid = owned_pid(pidfile, marker)
    if pid:
        pids.add(pid)
    for port in ports:
        for holder in port_holders(port) - pids:
            log(f"{name}: pid {holder} holds port {port}: {cmdline(holder)[:120]}")
            pids.add(holder)
    if pids:
        log(f"stopping {name} (pids {sorted(pids)})")
        terminate(pids, timeout)
    pidfile.unlink(missing_ok=True)
    busy = [port for port in ports if listening_inodes(port)]
    if busy:
        raise StackError(f"{name}: ports {busy} still listening after stop")


def ensure_ports_free(name: str, ports: list[int]) -> None:
    """Fail before starting if a foreign process already holds a port, naming it."""
    for port in ports:
        holders = port_holders(port)
        if holders or listening_inodes(port):
            who = ", ".join(f"{pid} ({cmdline(pid)[:80]})" for pid in holders) or "unknown"
            raise StackError(f"{name}: port {port} is taken by {who}; run `stack.py down`?")


def wait_until(ready, pid: int | None, timeout: float, what: str, log_files: list[Path]) -> float:
    """Poll ready() until true; fail loudly (log tails) on timeout or if the process dies."""
    start = time.monotonic()
    while not ready():
        if pid is not None and not pid_alive(pid):
            raise StackError(f"{what} exited during startup\n{tails(log_files)}")
        if time.monotonic() - start > timeout:
            raise StackError(f"{what} not ready after {timeout:.0f} s\n{tails(log_files)}")
        time.sleep(0.25)
    return time.monotonic() - start


def tails(paths: list[Path], lines: int = 40) -> str:
    out = []
    for path in paths:
        with contextlib.suppress(OSError):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- tail of {path} ---\n" + "\n".join(text))
    return "\n".join(out)


# --------------------------------------------------------------------------- Kafka


def ensure_jars(cfg: Config) -> float:
    """Resolve the broker jars into the cache once; returns seconds spent (0 if cached).

    Maven writes into a temp dir next to the cache which is renamed into place, so
    an interrupted resolve never leaves a half-filled libs dir that looks complete.
    """
    core_jar = cfg.libs / f"kafka_2.13-{cfg.kafka_version}.jar"
    if core_jar.exists():
        return 0.0
    if cfg.kafka_major not in (3, 4):
        raise StackError(f"KAFKA_VERSION={cfg.kafka_version}: pom has 3.x and 4.x profiles only")
    if not shutil.which("mvn"):
        raise StackError("Maven (mvn) is needed once to fetch the Kafka jars; it is not on PATH")
    profile = f"kafka{cfg.kafka_major}"
    cfg.jars_cache.mkdir(parents=True, exist_ok=True)
    log(f"resolving Kafka {cfg.kafka_version} jars with Maven (profile {profile}) ...")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=cfg.jars_cache, prefix=".resolve-") as tmp:
        out = Path(tmp) / "libs"
        cmd = [
            "mvn", "-B", "-q", "-f", str(HERE / "pom.xml"), f"-P{profile}",
            f"-Dkafka.version={cfg.kafka_version}",
            "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies",
            "-DincludeScope=runtime", f"-DoutputDirectory={out}",
        ]  # fmt: skip
        mvn = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if mvn.returncode != 0 or not (out / core_jar.name).exists():
            raise StackError(f"Maven could not resolve Kafka {cfg.kafka_version}: {' '.join(cmd)}\n"
                             f"{mvn.stdout[-4000:]}{mvn.stderr[-4000:]}")  # fmt: skip
        if cfg.libs.exists() and not any(cfg.libs.iterdir()):
            cfg.libs.rmdir()  # an empty leftover counts as missing
        try:
            out.rename(cfg.libs)
        except OSError:
            if not core_jar.exists():  # lost a race only if the winner left a complete cache
                raise
    elapsed = time.monotonic() - start
    log(f"resolved {len(list(cfg.libs.iterdir()))} jars into {cfg.libs} in {elapsed:.1f} s")
    return elapsed


def write_kafka_config(cfg: Config, data_dir: Path, server_log: Path) -> tuple[Path, str]:
    """Write server.properties and the logging config; returns (server.properties, JVM log flag)."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{cfg.controller_port}",
        "listeners": (
            f"PLAINTEXT://{HOST}:{cfg.kafka_port},SASL_PLAINTEXT://{HOST}:{cfg.sasl_port},"
            f"CONTROLLER://{HOST}:{cfg.controller_port}"
        ),
        "advertised.listeners": f"PLAINTEXT://{HOST}:{cfg.kafka_port},SASL_PLAINTEXT://{HOST}:{cfg.sasl_port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
        # The SASL listener authenticates with SCRAM-SHA-512 against the credentials in
        # the KRaft metadata (created at format time, see start_kafka). No authorizer:
        # any authenticated user may do anything, as on the PLAINTEXT listener.
        "listener.name.sasl_plaintext.sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "log.dirs": str(data_dir),
        "num.partitions": "1",
        # Kafka's default. Faust reads a changelog topic's metadata right after
        # creating it; with auto-creation off that read can miss the new topic
        # and crash the agent. The worker creates its own topics (topics.py).
        "auto.create.topics.enable": "true",
        # Single node: internal topics cannot have more replicas than brokers,
        # and transactions (exactly-once) need min.isr satisfiable by one node.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",  # 4.x; 3.x ignores it
        "share.coordinator.state.topic.min.isr": "1",
        # Tests want group joins in well under a second, with short client session timeouts.
        "group.initial.rebalance.delay.ms": "0",
        "group.min.session.timeout.ms": "1000",
        # Sized for a 2-core box.
        "num.network.threads": "2",
        "num.io.threads": "2",
        "log.cleaner.dedupe.buffer.size": "16777216",
    }
    server_props = cfg.kafka_dir / "server.properties"
    server_props.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))

    if cfg.kafka_major >= 4:
        log_config = cfg.kafka_dir / "log4j2.properties"
        log_config.write_text(
            "status = warn\n"
            "appender.file.type = File\n"
            "appender.file.name = file\n"
            f"appender.file.fileName = {server_log}\n"
            "appender.file.append = true\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = info\n"
            "rootLogger.appenderRef.file.ref = file\n"
            "logger.request.name = kafka.request.logger\n"
            "logger.request.level = warn\n"
        )
        return server_props, f"-Dlog4j2.configurationFile={log_config}"
    log_config = cfg.kafka_dir / "log4j.properties"
    log_config.write_text(
        "log4j.rootLogger=INFO, file\n"
        "log4j.appender.file=org.apache.log4j.FileAppender\n"
        f"log4j.appender.file.File={server_log}\n"
        "log4j.appender.file.Append=true\n"
        "log4j.appender.file.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        "log4j.logger.kafka.request.logger=WARN\n"
    )
    return server_props, f"-Dlog4j.configuration=file:{log_config}"


def new_cluster_id() -> str:
    """A KRaft cluster id as Kafka makes them; one starting with '-' would parse as an option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def sasl_password(cfg: Config) -> str:
    """The SCRAM user's password: generated once, kept in the stack dir (0600) across fresh formats."""
    with contextlib.suppress(OSError):
        return cfg.sasl_password_file.read_text().strip()
    password = secrets.token_hex(16)  # hex: nothing --add-scram's [name=...,password=...] syntax would split
    fd = os.open(cfg.sasl_password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password


def start_kafka(cfg: Config, fresh: bool) -> None:
    """Start the broker in the background and wait until it lists itself in metadata.

    fresh=True wipes the data dir and logs and formats new storage; fresh=False
    (restart-kafka) keeps the data so tests can observe recovery.
    """
    ensure_ports_free("kafka", cfg.kafka_ports)
    jar_seconds = ensure_jars(cfg)
    data_dir = cfg.kafka_dir / "data"
    stdout_log = cfg.logs_dir / "kafka.out"
    server_log = cfg.logs_dir / "kafka.log"
    if fresh:
        shutil.rmtree(data_dir, ignore_errors=True)
        stdout_log.unlink(missing_ok=True)
        server_log.unlink(missing_ok=True)
    server_props, log_flag = write_kafka_config(cfg, data_dir, server_log)
    java = [
        "java", "-Xms256m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35", "-Djava.awt.headless=true",
        log_flag, "-cp", f"{cfg.libs}/*",
    ]  # fmt: skip

    start = time.monotonic()
    if not (data_dir / "meta.properties").exists():
        scram = f"SCRAM-SHA-512=[name={SASL_USERNAME},password={sasl_password(cfg)}]"
        fmt = subprocess.run(
            [*java, "kafka.tools.StorageTool", "format", "-t", new_cluster_id(),
             "-c", str(server_props), "--ignore-formatted", "--add-scram", scram],
            capture_output=True, text=True,
        )  # fmt: skip
        if fmt.returncode != 0:
            raise StackError(f"StorageTool format failed:\n{fmt.stdout}{fmt.stderr}")
    elif not cfg.sasl_password_file.exists():
        log(f"the data dir predates the SASL listener: port {cfg.sasl_port} has no user "
            "(`stack.py down` and `up` format a fresh one)")  # fmt: skip
    format_seconds = time.monotonic() - start

    # Output goes to a file: an unread pipe would stall the broker once it fills.
    with open(stdout_log, "a") as out:
        out.write(f"=== stack.py: starting Kafka {cfg.kafka_version} at {time.ctime()} ===\n")
        out.flush()
        proc = subprocess.Popen(
            [*java, "kafka.Kafka", str(server_props)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # survives this script and the caller's Ctrl-C
        )  # fmt: skip
    cfg.kafka_pidfile.write_text(f"{proc.pid}\n")
    cfg.kafka_version_file.write_text(cfg.kafka_version + "\n")
    try:
        wait_until(lambda: kafka_ready(cfg), proc.pid, cfg.ready_timeout,
                   f"Kafka {cfg.kafka_version}", [stdout_log, server_log])  # fmt: skip
    except StackError:
        terminate({proc.pid}, 5.0)
        cfg.kafka_pidfile.unlink(missing_ok=True)
        raise
    total = time.monotonic() - start
    log(
        f"Kafka {cfg.kafka_version} ready in {total:.1f} s "
        f"(format {format_seconds:.1f} s, broker start {total - format_seconds:.1f} s"
        + (f"; jars resolved in {jar_seconds:.1f} s before that)" if jar_seconds else ")")
    )


def stop_kafka(cfg: Config) -> None:
    stop_service("kafka", cfg.kafka_pidfile, "kafka.Kafka", cfg.kafka_ports, KAFKA_STOP_TIMEOUT)


def running_kafka_version(cfg: Config) -> str | None:
    with contextlib.suppress(OSError):
        return cfg.kafka_version_file.read_text().strip()
    return None


# --------------------------------------------------------------------------- Redis


def ensure_debian_package(binary: str, packages: list[str]) -> str:
    """Path to `binary`, installing Debian's `packages` with apt-get if it is missing."""
    path = shutil.which(binary)
    if path:
        return path
    if os.geteuid() != 0:
        raise StackError(f"{binary} is not installed and installing it needs root: "
                         f"apt-get install {' '.join(packages)}")  # fmt: skip
    log(f"installing {' '.join(packages)} with apt-get ...")
    subprocess.run(
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
        f"-o DPkg::Lock::Timeout=300 {' '.join(packages)}",
        shell=True, check=True,
    )  # fmt: skip
    path = shutil.which(binary) or f"/usr/bin/{binary}"
    if not Path(path).exists():
        raise StackError(f"{binary} still missing after apt-get install {' '.join(packages)}")
    return path


def ensure_redis_server() -> str:
    """Path to redis-server, installing Debian's package if missing (its service is never used)."""
    return ensure_debian_package("redis-server", ["redis-server"])


def ensure_chromium() -> tuple[str, str]:
    """Paths to Chromium and its WebDriver (the dashboard's browser test), from Debian's packages."""
    packages = ["chromium", "chromium-driver"]
    return ensure_debian_package("chromium", packages), ensure_debian_package("chromedriver", packages)


def start_redis(cfg: Config) -> None:
    """Start a throwaway Redis (no persistence) on loopback and wait for PONG."""
    ensure_ports_free("redis", [cfg.redis_port])
    redis_server = ensure_redis_server()
    start = time.monotonic()
    subprocess.run(
        [redis_server, "--bind", HOST, "--port", str(cfg.redis_port),
         "--save", "", "--appendonly", "no", "--dir", str(cfg.redis_dir),
         "--daemonize", "yes", "--pidfile", str(cfg.redis_pidfile),
         "--logfile", str(cfg.logs_dir / "redis.log")],
        check=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    wait_until(lambda: redis_ready(cfg), None, cfg.ready_timeout, "Redis",
               [cfg.logs_dir / "redis.log"])  # fmt: skip
    log(f"Redis ready in {time.monotonic() - start:.1f} s")


def stop_redis(cfg: Config) -> None:
    stop_service("redis", cfg.redis_pidfile, "redis-server", [cfg.redis_port], REDIS_STOP_TIMEOUT)


# --------------------------------------------------------------------------- ganache (Ethereum JSON-RPC)


def ensure_ganache(cfg: Config) -> float:
    """Install the pinned ganache from the npm registry into the cache once; seconds spent (0 if cached).

    Like the jars: npm installs into a temp dir next to the cache, renamed into place,
    so an interrupted install never looks complete.
    """
    if cfg.ganache_bin.exists():
        return 0.0
    if not shutil.which("node") or not shutil.which("npm"):
        raise StackError("Node.js and npm are needed once to install ganache; they are not on PATH")
    cfg.ganache_cache.parent.mkdir(parents=True, exist_ok=True)
    log(f"installing ganache {cfg.ganache_version} from the npm registry ...")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=cfg.ganache_cache.parent, prefix=".ganache-") as tmp:
        out = Path(tmp) / "ganache"
        cmd = ["npm", "install", "--prefix", str(out), "--no-audit", "--no-fund", "--loglevel=error",
               f"ganache@{cfg.ganache_version}"]  # fmt: skip
        npm = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if npm.returncode != 0 or not (out / "node_modules" / ".bin" / "ganache").exists():
            raise StackError(f"npm could not install ganache {cfg.ganache_version}: {' '.join(cmd)}\n"
                             f"{npm.stdout[-4000:]}{npm.stderr[-4000:]}")  # fmt: skip
        if cfg.ganache_cache.exists() and not any(cfg.ganache_cache.iterdir()):
            cfg.ganache_cache.rmdir()  # an empty leftover counts as missing
        try:
            out.rename(cfg.ganache_cache)
        except OSError:
            if not cfg.ganache_bin.exists():  # lost a race only if the winner left a complete install
                raise
    elapsed = time.monotonic() - start
    log(f"installed ganache {cfg.ganache_version} into {cfg.ganache_cache} in {elapsed:.1f} s")
    return elapsed


def start_ganache(cfg: Config) -> None:
    """Start ganache (deterministic wallet, chain id 1337, in-memory chain) and wait for eth_blockNumber."""
    ensure_ports_free("ganache", [cfg.eth_port])
    install_seconds = ensure_ganache(cfg)
    cfg.ganache_dir.mkdir(parents=True, exist_ok=True)
    out_log = cfg.logs_dir / "ganache.log"
    start = time.monotonic()
    with open(out_log, "w") as out:
        proc = subprocess.Popen(
            ["node", str(cfg.ganache_bin), "--server.host", HOST, "--server.port", str(cfg.eth_port),
             "--wallet.deterministic", "--wallet.totalAccounts", "20", "--chain.chainId", "1337",
             "--logging.quiet"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    cfg.ganache_pidfile.write_text(f"{proc.pid}\n")
    try:
        wait_until(lambda: eth_ready(cfg), proc.pid, cfg.ready_timeout, "ganache", [out_log])
    except StackError:
        terminate({proc.pid}, 5.0)
        cfg.ganache_pidfile.unlink(missing_ok=True)
        raise
    log(f"ganache {cfg.ganache_version} ready in {time.monotonic() - start:.1f} s"
        + (f" (installed in {install_seconds:.1f} s before that)" if install_seconds else ""))  # fmt: skip


def stop_ganache(cfg: Config) -> None:
    stop_service("ganache", cfg.ganache_pidfile, "ganache", [cfg.eth_port], GANACHE_STOP_TIMEOUT)


# --------------------------------------------------------------------------- commands


@contextlib.contextmanager
def stack_lock(cfg: Config):
    """Serialise up/down/restart so two test sessions starting at once do not race."""
    for d in (cfg.kafka_dir, cfg.redis_dir, cfg.ganache_dir, cfg.logs_dir):
        d.mkdir(parents=True, exist_ok=True)
    with open(cfg.stack_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def stop_unresponsive(name: str, pidfile: Path, marker: str, timeout: float) -> None:
    """Stop our own process that runs but does not answer (hung, or half started).

    Unlike `down`, `up` never kills processes it did not start: a foreign holder of
    a port makes the start fail with its pid and command line instead.
    """
    pid = owned_pid(pidfile, marker)
    if pid:
        log(f"{name} pid {pid} is not answering; stopping it")
        terminate({pid}, timeout)
    pidfile.unlink(missing_ok=True)


def sasl_listening(cfg: Config) -> bool:
    """The running broker has the SASL listener (one started by an older stack.py does not)."""
    return bool(listening_inodes(cfg.sasl_port)) and cfg.sasl_password_file.exists()


def print_endpoints(cfg: Config) -> None:
    version = running_kafka_version(cfg) or cfg.kafka_version
    print(f"KAFKA_BOOTSTRAP={HOST}:{cfg.kafka_port}  # Apache Kafka {version}")
    if sasl_listening(cfg):
        print(f"KAFKA_SASL_BOOTSTRAP={HOST}:{cfg.sasl_port}  # SASL_PLAINTEXT, SCRAM-SHA-512")
        print(f"KAFKA_SASL_USERNAME={SASL_USERNAME}")
        # The file, not the password: this output lands in CI logs.
        print(f'KAFKA_SASL_PASSWORD="$(cat {cfg.sasl_password_file})"')
    print(f"REDIS_URL=redis://{HOST}:{cfg.redis_port}/0")
    print(f"ETH_RPC_URL={cfg.eth_url}  # ganache {cfg.ganache_version}, chain id 1337")


def cmd_up(cfg: Config) -> int:
    with stack_lock(cfg):
        start = time.monotonic()
        if kafka_ready(cfg):
            running = running_kafka_version(cfg)
            if running and running != cfg.kafka_version:
                raise StackError(f"Kafka {running} is running, {cfg.kafka_version} was asked for; "
                                 "run `stack.py down` first")  # fmt: skip
            log("Kafka already running" + ("" if sasl_listening(cfg) else
                f" without the SASL listener on port {cfg.sasl_port} (started by an older stack.py; "
                "`stack.py down` and `up` restart it with one)"))  # fmt: skip
        else:
            stop_unresponsive("Kafka", cfg.kafka_pidfile, "kafka.Kafka", KAFKA_STOP_TIMEOUT)
            start_kafka(cfg, fresh=True)
        if redis_ready(cfg):
            log("Redis already running")
        else:
            stop_unresponsive("Redis", cfg.redis_pidfile, "redis-server", REDIS_STOP_TIMEOUT)
            start_redis(cfg)
        if eth_ready(cfg):
            log("ganache already running")
        else:
            stop_unresponsive("ganache", cfg.ganache_pidfile, "ganache", GANACHE_STOP_TIMEOUT)
            start_ganache(cfg)
        log(f"up in {time.monotonic() - start:.1f} s")
    print_endpoints(cfg)
    return 0


def cmd_down(cfg: Config) -> int:
    with stack_lock(cfg):
        start = time.monotonic()
        stop_kafka(cfg)
        stop_redis(cfg)
        stop_ganache(cfg)
        log(f"down in {time.monotonic() - start:.1f} s; nothing listens on ports "
            f"{cfg.kafka_port}, {cfg.sasl_port}, {cfg.controller_port}, {cfg.redis_port}, {cfg.eth_port}")  # fmt: skip
    return 0


def cmd_status(cfg: Config) -> int:
    kafka, redis = kafka_ready(cfg), redis_ready(cfg)
    version = running_kafka_version(cfg) or "?"
    print(f"kafka {HOST}:{cfg.kafka_port} ({version}): {'ready' if kafka else 'DOWN'}")
    # Not part of the exit status: a broker started by an older stack.py still serves the suite.
    print(f"kafka SASL {HOST}:{cfg.sasl_port}: {'listening' if sasl_listening(cfg) else 'absent'}")
    eth = eth_ready(cfg)
    print(f"redis {HOST}:{cfg.redis_port}: {'ready' if redis else 'DOWN'}")
    print(f"ganache {cfg.eth_url}: {'ready' if eth else 'DOWN'}")
    return 0 if kafka and redis and eth else 1


def cmd_restart_kafka(cfg: Config) -> int:
    with stack_lock(cfg):
        running = running_kafka_version(cfg)
        if running and running != cfg.kafka_version:
            raise StackError(f"the data dir belongs to Kafka {running}, not {cfg.kafka_version}")
        start = time.monotonic()
        stop_kafka(cfg)
        log(f"Kafka stopped in {time.monotonic() - start:.1f} s")
        start_kafka(cfg, fresh=False)
    return 0


COMMANDS = {
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
    "restart-kafka": cmd_restart_kafka,
}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        print(f"usage: {argv[0]} {{{','.join(COMMANDS)}}}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[argv[1]](Config.from_env())
    except StackError as e:
        print(f"[stack] ERROR: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
