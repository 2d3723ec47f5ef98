"""The gateway: an OpenAI-compatible Flask app that serves the model and emits events.

The app factory only assembles: the long-lived objects (``gateway.Gateway``, in
``app.extensions["flywheel"]``), the thin views and error handlers (``routes``), and the
routing table's follower. The serving logic lives in ``chat``, ``feedback`` and
``ingest``; the wire format in ``protocol``.
"""

from __future__ import annotations

from flask import Flask

from flywheel.operator_token import operator_headers
from flywheel.settings import Settings
from serving.backends.base import Backend
from services.gateway import routes
from services.gateway.auth import KeyStore
from services.gateway.gateway import Gateway
from streams.producer import EventProducer

__all__ = ["create_app", "Gateway"]


def create_app(settings: Settings, *, backend: Backend | None = None, producer: EventProducer | None = None,
               keys: KeyStore | None = None) -> Flask:
    """Build the gateway. ``backend``/``producer``/``keys`` default to those the settings
    describe; tests and benchmarks pass their own."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.gateway.max_body_bytes
    app.json.sort_keys = False
    gw = Gateway.build(settings, backend=backend, producer=producer, keys=keys)
    app.extensions["flywheel"] = gw
    routes.init_app(app)
    if settings.gateway.routing_poll_s > 0:
        gw.router.follow(f"{settings.control_url}/api/routing", settings.gateway.routing_poll_s,
                         headers=lambda: operator_headers(settings))  # control.token, else DATA_DIR/operator_token
    return app
