"""Training artefacts through the control plane (the DuckDB writer): dataset versions
(build, list, show) and evaluation results (record, list)."""

from __future__ import annotations

from flask import Flask, jsonify, request

from flywheel.settings import Settings
from training.errors import DatasetError


def init_app(app: Flask, settings: Settings, plane) -> None:
    from training.datasets.builder import build_dataset, get_dataset, list_datasets

    @app.errorhandler(DatasetError)
    def _dataset_error(e: DatasetError):
        status = 404 if "no dataset" in str(e) else 422
        return jsonify({"error": {"message": str(e), "type": "invalid_request_error"}}), status

    @app.post("/api/datasets")
    def datasets_build():
        with plane.reader() as cur:
            return jsonify(build_dataset(cur, settings).to_dict()), 201

    @app.get("/api/datasets")
    def datasets_list():
        with plane.reader() as cur:
            return jsonify({"data": list_datasets(cur)})

    @app.get("/api/datasets/<version>")
    def datasets_show(version: str):
        with plane.reader() as cur:
            return jsonify(get_dataset(cur, version))

    @app.post("/api/evaluations")
    def evaluations_record():
        from training.evaluation.evaluate import record_evaluation

        data = request.get_json(silent=True)
        if not isinstance(data, dict) or not isinstance(data.get("report"), dict) or not data.get("folder"):
            raise DatasetError("send {'report': the report JSON, 'folder': where it was written}")
        with plane.reader() as cur:
            return jsonify({"eval_id": record_evaluation(cur, data["report"], data["folder"])}), 201

    @app.get("/api/evaluations")
    def evaluations_list():
        from training.evaluation.evaluate import list_evaluations

        with plane.reader() as cur:
            return jsonify({"data": list_evaluations(cur, request.args.get("candidate"))})
