"""Training artefacts through the control plane (the DuckDB writer): dataset versions
(build, list, show) and evaluation results (list; record a job's report: admin only, read from the
report folder, marked as posted)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
from flask import Flask, jsonify, request

from flywheel.settings import Settings
from services.control.auth import current_operator, requires
from services.control.errors import error_json
from services.control.protocol import Empty, EvaluationRecord, parse
from training.errors import DatasetError


def init_app(app: Flask, settings: Settings, plane) -> None:
    from training.datasets.builder import build_dataset, get_dataset, list_datasets

    @app.errorhandler(DatasetError)
    def _dataset_error(e: DatasetError):
        status = 404 if "no dataset" in str(e) else 422
        return error_json(str(e), status)

    @app.post("/api/datasets")
    def datasets_build():
        parse(Empty, optional=True)
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
    @requires("admin")
    def evaluations_record():
        """Record the report an evaluation job (`flywheel eval`) wrote under DATA_DIR/evals.
        The result is read from that folder's report.json on this machine, never taken from
        the request; admin only, and recorded with source "api" and the token's name. The
        refresh records its own job's report in-process and never reads these."""
        from training.evaluation.evaluate import record_evaluation

        data = parse(EvaluationRecord)
        evals = (settings.data_path / "evals").resolve()
        try:
            folder = Path(data.folder).expanduser().resolve()
        except RuntimeError:  # "~name" of no user: no home to expand
            raise DatasetError(f"{data.folder} is not a report folder an evaluation job wrote under {evals}") from None
        if not folder.is_relative_to(evals) or folder == evals or not (folder / "report.json").is_file():
            raise DatasetError(f"{data.folder} is not a report folder an evaluation job wrote under {evals}")
        try:
            report = json.loads((folder / "report.json").read_text())
            op = current_operator()
            with plane.reader() as cur:
                eval_id = record_evaluation(cur, report, folder, source="api",
                                            recorded_by=f"{op.name} ({op.id})" if op else None)
        except (KeyError, TypeError, ValueError, duckdb.Error) as e:
            raise DatasetError(f"{folder / 'report.json'} is not a report `flywheel eval` writes: "
                               f"{type(e).__name__}: {e}") from None
        return jsonify({"eval_id": eval_id}), 201

    @app.get("/api/evaluations")
    def evaluations_list():
        from training.evaluation.evaluate import list_evaluations

        with plane.reader() as cur:
            return jsonify({"data": list_evaluations(cur, request.args.get("candidate"))})
