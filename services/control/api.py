"""The control plane's JSON API (status, registry, routing, live metrics, rollouts; curation,
review, datasets, evaluations and refresh from their modules) and the operator console
(`services.console`, pages under /console/). Every route needs an operator token or a
console login (services/control/auth.py) but /healthz."""

from __future__ import annotations

from pathlib import Path

from flask import Flask, jsonify, request

from flywheel.settings import Settings
from serving.registry import RegistryError
from services import console
from services.control import audit, auth, curation, errors, refresh, review_api, rollouts, training_api
from services.control.auth import public, requires
from services.control.errors import error_json
from services.control.openapi import openapi
from services.control.operators import LiveOperators
from services.control.protocol import (Empty, ModelRegistration, RolloutAction, RolloutStart, RoutingUpdate, parse,
                                       query_limit)
from services.control.status import landed_status
from streams.live_metrics import metrics_filters, read_windows


def create_api(settings: Settings, plane) -> Flask:
    app = Flask(__name__)
    app.json.sort_keys = False
    app.extensions["flywheel"] = plane
    errors.init_app(app)
    auth.init_app(app, settings, plane, getattr(plane, "operators", None) or LiveOperators(settings.operators_path))

    @app.get("/healthz")
    @public
    def healthz():
        return jsonify({"status": "ok", "landing": plane.landing_stats()})

    @app.get("/openapi.json")
    def openapi_document():
        return jsonify(openapi())

    @app.get("/api/status")
    def status():
        with plane.reader() as conn:
            body = landed_status(conn)
        body["landing"] = plane.landing_stats()
        return jsonify(body)

    @app.errorhandler(RegistryError)
    def _registry_error(e: RegistryError):
        return error_json(str(e), e.status)

    @app.get("/api/models")
    def models():
        with plane.reader() as cur:
            return jsonify({"data": [m.to_dict() for m in plane.registry(cur).list()]})

    @app.get("/api/models/<version>")
    def model(version: str):
        with plane.reader() as cur:
            return jsonify(plane.registry(cur).get(version).to_dict())

    @app.post("/api/models")
    def register():
        data = parse(ModelRegistration)
        with plane.reader() as cur:
            mv = plane.registry(cur).register(
                data.version, Path(data.adapter_path), parent=data.parent, notes=data.notes,
                dataset=data.dataset, training_run=data.training_run)
        return jsonify(mv.to_dict()), 201

    @app.post("/api/models/<version>/retire")
    def retire(version: str):
        parse(Empty, optional=True)
        with plane.reader() as cur:
            return jsonify(plane.registry(cur).retire(version).to_dict())

    @app.get("/api/routing")
    def routing():
        with plane.reader() as cur:
            return jsonify(plane.registry(cur).routing_table().to_dict())

    @app.post("/api/routing")
    def set_routing():
        data = parse(RoutingUpdate)
        with plane.reader() as cur:
            table = plane.registry(cur).set_routes(data.alias, data.weights, data.reason or "set by an operator")
        return jsonify(table.to_dict())

    @app.get("/api/metrics")
    def live_metrics():
        try:
            filters = metrics_filters(request.args)
        except ValueError as e:
            raise RegistryError(str(e)) from None
        with plane.reader() as cur:
            return jsonify({"data": read_windows(cur, **filters)})

    @app.post("/api/rollouts")
    def rollout_start():
        data = parse(RolloutStart)
        override = None
        if data.override_gate:
            if not (data.reason or "").strip():
                raise RegistryError("overriding the evaluation gate needs a 'reason'; it is recorded in the audit log")
            override = rollouts.GateOverride(by=auth.current_operator(), reason=data.reason.strip())
        return jsonify(plane.rollouts.start(data.alias or settings.model.alias, data.candidate,
                                            override=override)), 201

    @app.get("/api/rollouts/<alias>")
    def rollout_status(alias: str):
        return jsonify(plane.rollouts.status(alias))

    @app.post("/api/rollouts/<alias>/<action>")
    def rollout_act(alias: str, action: str):
        return jsonify(plane.rollouts.act(alias, action, reason=parse(RolloutAction, optional=True).reason))

    @app.get("/api/audit")
    @requires("admin")
    def audit_list():
        with plane.reader() as cur:
            return jsonify({"data": audit.list_entries(cur, query_limit(100), request.args.get("action"))})

    curation.init_app(app, settings, plane)
    review_api.init_app(app, settings, plane)
    training_api.init_app(app, settings, plane)
    refresh.init_app(app, settings, plane)
    console.init_app(app, settings, plane)
    return app
