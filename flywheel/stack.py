"""The local stack `flywheel up` runs: embedded broker, topics, control plane, stream worker,
gateway.

Start order: broker → topics → control plane → stream worker → gateway. Stop order is the
reverse, and it drains: the gateway stops first and flushes its spool into Kafka, the
stream worker publishes its last window deltas, then the control plane lands everything in
the topics (it stops after a quiet second), then the broker stops.

This module is the composition root of the local stack, not a library: it runs the other
layers' processes, so it imports them lazily, inside `start` (flywheel/ imports nothing
above it at load time), and nothing imports it but `flywheel up`.
"""

from __future__ import annotations

import sys

from flywheel.supervisor import Child, Supervisor, http_ready


class Stack:
    def __init__(self, settings, console=None):
        self.s = settings
        self.console = console
        self.broker = None
        self.sup = Supervisor(settings.data_path / "logs")

    def _say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)

    def start(self) -> None:
        from services.gateway.auth import ensure_dev_keys
        from streams.broker import EmbeddedBroker
        from streams.topics import ensure_topics, topic_names

        s = self.s
        s.data_path.mkdir(parents=True, exist_ok=True)
        from streams.privacy import user_salt

        user_salt(s)  # the gateway's pseudonym salt exists (or is refused) before anything starts
        if not s.kafka.bootstrap:
            self.broker = EmbeddedBroker(s.kafka.embedded_port, s.data_path / "logs" / "broker.log")
            (s.data_path / "logs").mkdir(parents=True, exist_ok=True)
            self.broker.start()
            self._say(f"embedded broker (tansu, memory storage) on {self.broker.bootstrap}")
        created = ensure_topics(s.bootstrap, list(topic_names(s).values()), s.kafka.partitions)
        if created:
            self._say(f"created topics {', '.join(created)} ({s.kafka.partitions} partitions each)")
        if s.gateway.auth:
            ensure_dev_keys(s)
        cmd = [sys.executable, "-m", "flywheel"]
        self._say("starting the control plane (migrations, landing)...")
        self.sup.start(Child("control-plane", cmd + ["control-plane"], http_ready(f"{s.control_url}/healthz"),
                             stop_timeout=120))
        from streams.stream_worker import ready_path

        ready_path(s).unlink(missing_ok=True)
        self._say("starting the stream worker (faust: live per-version metrics)...")
        self.sup.start(Child("stream-worker", cmd + ["stream-worker"], ready_path(s).exists, stop_timeout=60),
                       timeout=120)
        self._say("starting the gateway (loads the model on first start: converts it once, ~15 s)...")
        self.sup.start(Child("gateway", cmd + ["gateway"], http_ready(f"{s.gateway_url}/healthz"), stop_timeout=90),
                       timeout=600)

    def wait(self, stop):
        """Block until ``stop`` is set or a child dies; return the dead child, if any."""
        while not stop.wait(0.5):
            dead = self.sup.dead()
            if dead is not None:
                return dead
            if self.broker is not None and self.broker.proc is not None and self.broker.proc.poll() is not None:
                return Child("embedded broker", [], lambda: False, proc=self.broker.proc,
                             log_path=self.s.data_path / "logs" / "broker.log")
        return None

    def stop(self) -> None:
        self.sup.stop_all(on_stop=lambda c: self._say(f"  stopping {c.name}..."))
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
