"""The control plane's JSON API (read-only for now): status figures for `flywheel status`."""

from __future__ import annotations

from flask import Flask, jsonify

from services.control.status import landed_status


def create_api(settings, plane) -> Flask:
    app = Flask(__name__)
    app.json.sort_keys = False
    app.extensions["flywheel"] = plane

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok", "landing": plane.landing_stats()})

    @app.get("/api/status")
    def status():
        with plane.reader() as conn:
            body = landed_status(conn)
        body["landing"] = plane.landing_stats()
        return jsonify(body)

    return app
