"""The embedded broker: a single-node Apache Kafka 4.x in KRaft mode on loopback.

The broker runs from Kafka's Maven Central artifacts on the local Java runtime. `mvn` copies the
jars named by `kafka/pom.xml` into a cache folder once; every later start reuses them.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from stylestream.schemas.errors import StylestreamError

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.2.0"

LOG4J_PROPERTIES = """\
rootLogger.level=WARN
rootLogger.appenderRef.out.ref=STDOUT
appender.console.type=Console
appender.console.name=STDOUT
appender.console.layout.type=PatternLayout
appender.console.layout.pattern=[%d] %p %m (%c)%n
logger.kafka.name=kafka
logger.kafka.level=WARN
logger.server.name=org.apache.kafka
logger.server.level=WARN
"""


class BrokerError(StylestreamError):
    """The embedded broker could not be installed or started."""


def default_cache_dir() -> Path:
    """Return the folder that contains the Kafka jars (STYLESTREAM_KAFKA_CACHE or ./.cache/kafka)."""
    configured = os.environ.get("STYLESTREAM_KAFKA_CACHE")
    return Path(configured) if configured else Path.cwd() / ".cache" / "kafka"


def ensure_kafka_jars(cache_dir: Path | None = None) -> Path:
    """Fetch the Kafka runtime jars with Maven unless the cache already contains them.

    Returns the folder of jars. Raises BrokerError when Java or Maven is missing or Maven fails.
    """
    cache_dir = cache_dir or default_cache_dir()
    lib_dir = cache_dir / f"kafka-{KAFKA_VERSION}" / "lib"
    marker = lib_dir / ".complete"
    if marker.exists():
        return lib_dir

    if shutil.which("java") is None:
        raise BrokerError(
            "Java was not found on PATH, and the embedded broker is Apache Kafka on the JVM. "
            "Install Java 17 or newer (Debian: apt-get install openjdk-17-jre-headless), "
            "or pass --broker kafka://HOST:PORT to use a running broker."
        )
    if shutil.which("mvn") is None:
        raise BrokerError(
            "Maven (mvn) was not found on PATH; it fetches the Kafka jars once. "
            "Install it (Debian: apt-get install maven) or pass --broker kafka://HOST:PORT."
        )

    lib_dir.mkdir(parents=True, exist_ok=True)
    pom = resources.files("stylestream.streams").joinpath("kafka/pom.xml")
    with resources.as_file(pom) as pom_path:
        log.info("Fetching Apache Kafka %s jars with Maven into %s", KAFKA_VERSION, lib_dir)
        command = [
            "mvn", "-B", "-q", "-f", str(pom_path), "dependency:copy-dependencies",
            "-DincludeScope=runtime", f"-DoutputDirectory={lib_dir}",
        ]
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise BrokerError(
            f"Maven failed to fetch the Kafka jars (exit {result.returncode}):\n"
            f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    marker.write_text(KAFKA_VERSION)
    return lib_dir


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _cluster_id() -> str:
    """Return a KRaft cluster id: 22 URL-safe base64 characters that do not start with '-'."""
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


def _server_properties(data_dir: Path, port: int, controller_port: int) -> str:
    return f"""\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data_dir}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=1048577
"""


@dataclass
class EmbeddedKafka:
    """A single-node Apache Kafka broker process bound to 127.0.0.1.

    Use it as a context manager, or call start() and stop(). Topics are not created automatically:
    stylestream declares every topic with its partition count before anything produces to it.
    """

    port: int = 0
    work_dir: Path | None = None
    heap: str = "512m"
    cache_dir: Path | None = None
    _process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _owns_work_dir: bool = field(default=False, init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        """Return the bootstrap address as host:port."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """Return the broker URL in Faust's form, kafka://host:port."""
        return f"kafka://{self.bootstrap}"

    def start(self, timeout: float = 90.0) -> "EmbeddedKafka":
        """Format the storage, start the broker and wait until it accepts connections."""
        lib_dir = ensure_kafka_jars(self.cache_dir)
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="stylestream-kafka-"))
            self._owns_work_dir = True
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.port and not _port_is_free(self.port):
            raise BrokerError(
                f"port {self.port} on 127.0.0.1 is already in use, perhaps by another broker; "
                "stop it, pick another port, or pass 0 for a free one"
            )
        self.port = self.port or free_port()
        controller_port = free_port()

        # Step 1: write the configuration.
        properties = self.work_dir / "server.properties"
        properties.write_text(_server_properties(self.work_dir / "data", self.port, controller_port))
        log4j = self.work_dir / "log4j2.properties"
        log4j.write_text(LOG4J_PROPERTIES)
        java = [
            "java", f"-Xms{self.heap}", f"-Xmx{self.heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{lib_dir}/*",
        ]

        # Step 2: format the KRaft metadata log.
        formatted = subprocess.run(
            [*java, "kafka.tools.StorageTool", "format", "-t", self._cluster_id(), "-c", str(properties),
             "--ignore-formatted"],
            capture_output=True, text=True,
        )
        if formatted.returncode != 0:
            raise BrokerError(f"Formatting the Kafka storage failed:\n{formatted.stderr[-3000:]}")

        # Step 3: start the broker and wait for its port.
        log_path = self.work_dir / "broker.log"
        log.info("Starting Apache Kafka %s on %s (log: %s)", KAFKA_VERSION, self.bootstrap, log_path)
        with open(log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                [*java, "kafka.Kafka", str(properties)],
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self._wait_until_ready(timeout, log_path)
        log.info("Apache Kafka is ready on %s", self.bootstrap)
        return self

    def _cluster_id(self) -> str:
        """Return the cluster id stored in the work folder, creating it on first start."""
        assert self.work_dir is not None
        path = self.work_dir / "cluster.id"
        if path.exists():
            return path.read_text().strip()
        cluster_id = _cluster_id()
        path.write_text(cluster_id)
        return cluster_id

    def _wait_until_ready(self, timeout: float, log_path: Path) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise BrokerError(f"Kafka exited with code {self._process.returncode} during start-up:\n{tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.2)
                continue
            if _broker_answers_metadata(self.bootstrap):
                return
            time.sleep(0.2)
        self.stop()
        raise BrokerError(f"Kafka did not become ready on {self.bootstrap} within {timeout:.0f} s; see {log_path}")

    def wait(self) -> int:
        """Block until the broker process exits and return its exit code."""
        if self._process is None:
            return 0
        return self._process.wait()

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the broker with SIGTERM, then SIGKILL after the timeout, and remove owned files."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            log.info("Stopping Apache Kafka on %s", self.bootstrap)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("Kafka did not stop within %.0f s; killing it", timeout)
                process.kill()
                process.wait()
        if self._owns_work_dir and self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> "EmbeddedKafka":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _broker_answers_metadata(bootstrap: str) -> bool:
    """Return True once the broker responds to a metadata request."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000, client_id="stylestream-probe")
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()
