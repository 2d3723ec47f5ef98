"""Run the gateway under gunicorn: one worker process (the model lives in it) with many
threads (requests wait on the batching backend, not on the CPU). More throughput comes
from more gateway replicas behind a load balancer; they are stateless.

On SIGTERM gunicorn stops accepting, lets running requests finish, and the worker's exit
hook closes the app: the producer drains its spool to Kafka before the process ends.
"""

from __future__ import annotations

import logging

from gunicorn.app.base import BaseApplication

log = logging.getLogger(__name__)


class GatewayServer(BaseApplication):
    def __init__(self, settings, app_factory=None):
        self.settings = settings
        self.app_factory = app_factory
        self.app = None
        super().__init__()

    def load_config(self):
        s = self.settings.gateway
        for key, value in {
            "bind": f"{s.host}:{s.port}",
            "workers": 1,
            "worker_class": "gthread",
            "threads": s.threads,
            "timeout": 300,  # worker heartbeat; long generations are normal
            "graceful_timeout": 60,
            "keepalive": 30,
            "accesslog": None,
            "loglevel": self.settings.log_level.lower(),
            "worker_exit": self._worker_exit,
            "proc_name": "flywheel-gateway",
        }.items():
            self.cfg.set(key, value)

    def load(self):
        # Called in the worker after fork: the model and the producer thread start there.
        from services.gateway.app import create_app

        self.app = (self.app_factory or create_app)(self.settings)
        return self.app

    def _worker_exit(self, server, worker):
        if self.app is not None:
            log.info("gateway stopping: draining the event spool to Kafka")
            self.app.extensions["flywheel"].close()


def serve(settings) -> None:
    from streams.privacy import user_salt

    user_salt(settings)  # no usable pseudonym salt: a clear error here, not a worker that fails to boot
    GatewayServer(settings).run()
