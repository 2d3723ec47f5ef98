"""The operator console: server-rendered pages on the control plane (``/console/``) over
the same data and the same JSON API as the CLI. Pages read through the plane's DuckDB
reader; every action (review decisions, rollout steps, curation and refresh runs) is a
``fetch`` to ``/api/...`` from ``static/console.js``, so the console can do nothing the API
does not validate."""

from services.console.pages import init_app

__all__ = ["init_app"]
