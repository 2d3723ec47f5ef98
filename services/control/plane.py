"""The control-plane process: migrations, the landing consumer, the JSON API."""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from datetime import datetime, timezone

from apscheduler.schedulers.background import BackgroundScheduler
import duckdb
from werkzeug.serving import make_server

from flywheel.settings import Settings
from serving.registry import Registry
from services.control.api import create_api
from services.control.migrations import ALL
from services.control.operators import LiveOperators, Operator, ensure_bootstrap
from services.control.refresh import RefreshRunner
from services.control.rollouts import RolloutManager
from streams.landing import LandingConsumer
from streams.producer import EventProducer
from streams.topics import ensure_topics, topic_names
from streams.warehouse import apply_migrations, connect

log = logging.getLogger(__name__)


class ControlPlane:
    def __init__(self, settings: Settings, *, serve_api: bool = True):
        self.settings = settings
        # Topics with explicit partition counts (production Kafka runs without auto-creation).
        ensure_topics(settings.bootstrap, list(topic_names(settings).values()), settings.kafka.partitions, timeout=60)
        self.conn = connect(settings.db_path)
        applied = apply_migrations(self.conn, ALL)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        with self.reader() as cur:
            self.registry(cur).ensure_base()
        # Operators: the first start makes the local admin token; the plane's own jobs
        # (training, evaluation) get a token that lives only in this process.
        made = ensure_bootstrap(settings)
        if made is not None:
            log.warning("made an admin operator token for the console and the CLI: it is in %s (mode 600); "
                        "`flywheel operators create` makes more, `flywheel operators revoke` ends one", made)
        self.job_token = secrets.token_urlsafe(32)
        self.operators = LiveOperators(settings.operators_path, extra={self.job_token: Operator(
            f"job-{secrets.token_hex(4)}", "control-plane jobs", "admin", datetime.now(timezone.utc).isoformat())})
        self.landing = LandingConsumer(settings, self.conn.cursor(), topic_names(settings))
        # Its own spool: `flywheel up` runs the gateway in the same data folder.
        self.producer = EventProducer(settings.bootstrap, settings.data_path / "spool-control",
                                      client_id=f"{settings.kafka.client_id}-control")
        self.rollouts = RolloutManager(settings, self, self.producer)
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.scheduler.add_job(self._tick, "interval", seconds=settings.rollout.tick_s, max_instances=1,
                               coalesce=True, id="rollouts")
        self.refresh = RefreshRunner(settings, self)
        self.refresh.reconcile()  # a turn a killed control plane left `running` is failed now, saying so
        self.refresh.install(self.scheduler)  # refresh.cron / refresh.interval_min / refresh.after_feedback
        self._landing_thread = threading.Thread(target=self._land, name="landing", daemon=True)
        self._api_server = None
        self.api_extensions: dict = {}
        if serve_api:
            app = create_api(settings, self)
            self.api_extensions = app.extensions
            self._api_server = make_server(settings.control.host, settings.control.port, app, threaded=True)
        self.failed: BaseException | None = None

    def _tick(self) -> None:
        try:
            self.rollouts.tick()
        except Exception:  # noqa: BLE001 - one bad tick must not stop the scheduler; it is logged
            log.exception("rollout tick failed")

    def _land(self) -> None:
        try:
            self.landing.run()
        except BaseException as e:  # noqa: BLE001 - reported by run(); the process exits non-zero
            log.exception("landing stopped on an error")
            self.failed = e

    def registry(self, cur: duckdb.DuckDBPyConnection) -> Registry:
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

    def start(self, scheduler: bool = True) -> "ControlPlane":
        self._landing_thread.start()
        if scheduler:
            self.scheduler.start()
        if self._api_server is not None:
            threading.Thread(target=self._api_server.serve_forever, name="control-api", daemon=True).start()
        return self

    def wait(self, stop: threading.Event) -> None:
        while not stop.wait(0.5):
            if not self._landing_thread.is_alive():
                return

    def stop(self, drain: bool = True, timeout: float = 60.0) -> None:
        """Stop landing (after draining what is in the topics, by default), then the API."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.producer.close(drain_timeout=10 if drain else 0.5)  # its events land in the drain below
        (self.landing.stop if drain else self.landing.stop_now).set()
        self._landing_thread.join(timeout)
        if self._landing_thread.is_alive():
            self.landing.stop_now.set()
            self._landing_thread.join(10)
        if self._api_server is not None:
            self._api_server.shutdown()
        self.conn.close()
