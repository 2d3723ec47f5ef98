"""A small process supervisor for `flywheel up`: starts children in order, waits until each
is ready, notices when one dies, and stops them in reverse order (each gets SIGTERM and
time to drain before SIGKILL). Each child leads its own process group and the signals go to
the group, so what a child started (the control plane's training job, say) stops with it."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flywheel.errors import FlywheelError

log = logging.getLogger(__name__)


def http_ready(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return True
        except urllib.error.HTTPError:
            return True  # it answers: up, even if degraded
        except OSError:
            return False

    return check


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the process group the child leads (it was started in a new session)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class Child:
    name: str
    argv: list[str]
    ready: Callable[[], bool]
    stop_timeout: float = 60.0
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None


class Supervisor:
    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.children: list[Child] = []

    def start(self, child: Child, timeout: float = 180.0) -> Child:
        child.log_path = self.log_dir / f"{child.name}.log"
        out = open(child.log_path, "ab")
        child.proc = subprocess.Popen(child.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env={**os.environ, **child.env}, start_new_session=True)
        out.close()
        self.children.append(child)
        deadline = time.monotonic() + timeout
        while not child.ready():
            if child.proc.poll() is not None:
                raise FlywheelError(f"{child.name} exited with code {child.proc.returncode} while starting; "
                                    f"see {child.log_path}")
            if time.monotonic() > deadline:
                raise FlywheelError(f"{child.name} was not ready within {timeout:.0f}s; see {child.log_path}")
            time.sleep(0.2)
        return child

    def dead(self) -> Child | None:
        """The first child that exited on its own, if any."""
        for child in self.children:
            if child.proc is not None and child.proc.poll() is not None:
                return child
        return None

    def stop(self, child: Child) -> int | None:
        proc = child.proc
        if proc is None:
            return None
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(child.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", child.name, child.stop_timeout)
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        # What the child started and left behind (a job whose parent died first) goes too.
        _signal_group(proc, signal.SIGTERM)
        child.proc = None
        return proc.returncode

    def stop_all(self, on_stop: Callable[[Child], None] | None = None) -> None:
        for child in reversed(self.children):
            if on_stop:
                on_stop(child)
            self.stop(child)
        self.children.clear()
