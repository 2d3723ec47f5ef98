"""The control-plane process: migrations, the landing consumer, the JSON API."""

from __future__ import annotations

import contextlib
import logging
import threading

from werkzeug.serving import make_server

from services.control.api import create_api
from serving.registry import Registry
from services.control.migrations import ALL
from streams.landing import LandingConsumer
from streams.topics import ensure_topics, topic_names
from streams.warehouse import apply_migrations, connect

log = logging.getLogger(__name__)


class ControlPlane:
    def __init__(self, settings, *, serve_api: bool = True):
        self.settings = settings
        # Topics with explicit partition counts (production Kafka runs without auto-creation).
        ensure_topics(settings.bootstrap, list(topic_names(settings).values()), settings.kafka.partitions, timeout=60)
        self.conn = connect(settings.db_path)
        applied = apply_migrations(self.conn, ALL)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        with self.reader() as cur:
            self.registry(cur).ensure_base()
        self.landing = LandingConsumer(settings, self.conn.cursor(), topic_names(settings))
        self._landing_thread = threading.Thread(target=self._land, name="landing", daemon=True)
        self._api_server = None
        if serve_api:
            app = create_api(settings, self)
            self._api_server = make_server(settings.control.host, settings.control.port, app, threaded=True)
        self.failed: BaseException | None = None

    def _land(self) -> None:
        try:
            self.landing.run()
        except BaseException as e:  # noqa: BLE001 - reported by run(); the process exits non-zero
            log.exception("landing stopped on an error")
            self.failed = e

    def registry(self, cur) -> Registry:
        return Registry.from_settings(cur, self.settings)

    @contextlib.contextmanager
    def reader(self):
        cur = self.conn.cursor()
        try:
            yield cur
        finally:
            cur.close()

    def landing_stats(self) -> dict:
        lc = self.landing
        return {"batches": lc.batches, "records": lc.landed_total, "dead_letters": lc.dead_total,
                "last_batch_at": lc.last_batch_at, "running": self._landing_thread.is_alive()}

    def start(self) -> "ControlPlane":
        self._landing_thread.start()
        if self._api_server is not None:
            threading.Thread(target=self._api_server.serve_forever, name="control-api", daemon=True).start()
        return self

    def wait(self, stop: threading.Event) -> None:
        while not stop.wait(0.5):
            if not self._landing_thread.is_alive():
                return

    def stop(self, drain: bool = True, timeout: float = 60.0) -> None:
        """Stop landing (after draining what is in the topics, by default), then the API."""
        (self.landing.stop if drain else self.landing.stop_now).set()
        self._landing_thread.join(timeout)
        if self._landing_thread.is_alive():
            self.landing.stop_now.set()
            self._landing_thread.join(10)
        if self._api_server is not None:
            self._api_server.shutdown()
        self.conn.close()
