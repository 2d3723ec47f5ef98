"""Pieces the benchmarks share: a broker, topics, a gateway or control plane as real
processes (the production servers), percentiles. Everything binds 127.0.0.1 and is
stopped by PID when the benchmark ends."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flywheel.settings import Settings  # noqa: E402
from streams.broker import EmbeddedBroker  # noqa: E402
from streams.topics import ensure_topics, topic_names  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values, q: float) -> float:
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


@contextlib.contextmanager
def broker_and_settings(**changes):
    data = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    with EmbeddedBroker(free_port()) as broker:
        s = Settings(data_dir=str(data)).replace(
            kafka={"bootstrap": broker.bootstrap},
            privacy={"user_salt": "salt-of-the-benchmarks"},  # an external broker needs one (streams/privacy.py)
            # Benchmarks measure the gateway, not its per-key limits (one key drives all the load).
            gateway={"port": free_port(), "rate_limit_rps": 0, "max_concurrent_per_key": 0},
            control={"port": free_port()},
        )
        if changes:
            s = s.replace(**changes)
        ensure_topics(s.bootstrap, list(topic_names(s).values()), s.kafka.partitions)
        yield s


def env_of(s: Settings) -> dict:
    return {
        **os.environ,
        "FLYWHEEL_DATA_DIR": str(s.data_path),
        "FLYWHEEL_KAFKA__BOOTSTRAP": s.bootstrap,
        "FLYWHEEL_PRIVACY__USER_SALT": s.privacy.user_salt.get_secret_value(),
        "FLYWHEEL_GATEWAY__PORT": str(s.gateway.port),
        "FLYWHEEL_GATEWAY__THREADS": str(s.gateway.threads),
        "FLYWHEEL_GATEWAY__AUTH": json.dumps(s.gateway.auth),
        "FLYWHEEL_GATEWAY__RATE_LIMIT_RPS": json.dumps(s.gateway.rate_limit_rps),
        "FLYWHEEL_GATEWAY__MAX_CONCURRENT_PER_KEY": json.dumps(s.gateway.max_concurrent_per_key),
        "FLYWHEEL_CONTROL__PORT": str(s.control.port),
        "FLYWHEEL_MODEL__BACKEND": s.model.backend,
        "FLYWHEEL_MODEL__MAX_BATCH": str(s.model.max_batch),
        "FLYWHEEL_LOG_LEVEL": "WARNING",
    }


def _wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {timeout}s")


@contextlib.contextmanager
def process(s: Settings, command: str, ready_url: str, timeout: float = 300):
    proc = subprocess.Popen([sys.executable, "-m", "flywheel", command], env=env_of(s), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_http(ready_url, proc, timeout)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def gateway(s: Settings, timeout: float = 300):
    return process(s, "gateway", f"{s.gateway_url}/healthz", timeout)


def control_plane(s: Settings):
    return process(s, "control-plane", f"{s.control_url}/healthz", 60)


def get_json(url: str, headers: dict | None = None) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
        return json.loads(r.read())


def emit(figures: dict) -> None:
    """One JSON line of figures on stdout (and a copy under bench/results/)."""
    line = json.dumps(figures)
    print(line)
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"{figures['bench']}.json").write_text(line + "\n")
