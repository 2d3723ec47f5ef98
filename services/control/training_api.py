"""Dataset versions through the control plane (the DuckDB writer): build, list, show."""

from __future__ import annotations

from flask import Flask, jsonify

from training.errors import DatasetError


def init_app(app: Flask, settings, plane) -> None:
    from training.datasets import build_dataset, get_dataset, list_datasets

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
