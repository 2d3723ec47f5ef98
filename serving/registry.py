"""The model registry: versions (the base model and LoRA adapters on it) and the routing
history, kept in DuckDB by the control plane (the only writer).

A version's name is immutable: backends load its adapter under that name. Registering
copies the adapter into ``DATA_DIR/models/<version>`` and checks that it loads on the base
model before anything can route to it.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from flywheel.settings import Settings
from serving.routing import Route, RoutingError, RoutingTable

STATUSES = ("candidate", "canary", "production", "retired", "rolled_back")
BASE_VERSION = "base"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class RegistryError(ValueError):
    """A registry request that cannot be done; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ModelVersion:
    version: str
    base_model: str
    adapter_path: str | None
    parent_version: str | None
    dataset: str | None
    training_run: str | None
    status: str
    notes: str | None
    created_at: str
    updated_at: str

    def to_dict(self) -> dict:
        return asdict(self)


def check_adapter(base_model_dir: Path, adapter_dir: Path) -> None:
    """Raise RegistryError unless ``adapter_dir`` is a PEFT LoRA adapter that loads on the base."""
    config = adapter_dir / "adapter_config.json"
    if not config.is_file():
        raise RegistryError(f"{adapter_dir} is not a PEFT adapter folder (no adapter_config.json)")
    try:
        from peft import PeftModel

        from serving.model_store import load_model

        model, _ = load_model(base_model_dir)
        PeftModel.from_pretrained(model, str(adapter_dir))
    except Exception as e:  # noqa: BLE001 - any load failure means: not usable on this base
        raise RegistryError(f"the adapter in {adapter_dir} does not load on the base model: {e}") from None


class Registry:
    def __init__(self, conn: duckdb.DuckDBPyConnection, *, models_dir: Path, base_model: str, alias: str,
                 base_model_dir: Callable[[], Path] | None = None,
                 check: Callable[[Path, Path], None] = check_adapter):
        self.conn = conn
        self.models_dir = Path(models_dir)
        self.base_model = base_model
        self.alias = alias
        self._base_model_dir = base_model_dir
        self._check = check

    @classmethod
    def from_settings(cls, conn: duckdb.DuckDBPyConnection, settings: Settings, **kw) -> "Registry":
        def base_dir() -> Path:
            from serving.model_store import ensure_hf_model

            return ensure_hf_model(settings.model_cache_path)

        return cls(conn, models_dir=settings.data_path / "models", base_model="SmolLM2-135M-Instruct",
                   alias=settings.model.alias, base_model_dir=base_dir, **kw)

    # -- versions ----------------------------------------------------------------------
    def ensure_base(self) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO model_versions (version, base_model, status, notes) VALUES (?, ?, 'production', ?)",
            [BASE_VERSION, self.base_model, "the bundled base model, no adapter"])

    def list(self) -> list[ModelVersion]:
        return [self._row(r) for r in self.conn.execute(_SELECT + " ORDER BY created_at, version").fetchall()]

    def get(self, version: str) -> ModelVersion:
        row = self.conn.execute(_SELECT + " WHERE version = ?", [version]).fetchone()
        if row is None:
            raise RegistryError(f"no model version {version!r}; see `flywheel models list`", 404)
        return self._row(row)

    def register(self, version: str, adapter_src: Path, *, parent: str | None = None, notes: str | None = None,
                 dataset: str | None = None, training_run: str | None = None) -> ModelVersion:
        if not _NAME.match(version) or version == BASE_VERSION:
            raise RegistryError(f"invalid version name {version!r}: lowercase letters, digits, '.', '_', '-'; "
                                f"up to 64 characters; {BASE_VERSION!r} is reserved")
        if self.conn.execute("SELECT 1 FROM model_versions WHERE version = ?", [version]).fetchone():
            raise RegistryError(f"version {version!r} exists already: version names are immutable", 409)
        if parent is not None:
            self.get(parent)
        try:
            src = Path(adapter_src).expanduser().resolve()
        except RuntimeError:  # "~name" of no user: no home to expand
            raise RegistryError(f"adapter folder {adapter_src} does not exist") from None
        if not src.is_dir():
            raise RegistryError(f"adapter folder {src} does not exist")
        dest = self.models_dir / version
        if dest.exists():
            raise RegistryError(f"{dest} exists already; remove it or pick another version name", 409)
        if self._base_model_dir is not None:
            self._check(self._base_model_dir(), src)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{version}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        tmp.rename(dest)
        self.conn.execute(
            "INSERT INTO model_versions (version, base_model, adapter_path, parent_version, dataset, training_run, "
            "status, notes) VALUES (?, ?, ?, ?, ?, ?, 'candidate', ?)",
            [version, self.base_model, str(dest), parent, dataset, training_run, notes])
        return self.get(version)

    def set_status(self, version: str, status: str, notes: str | None = None) -> ModelVersion:
        if status not in STATUSES:
            raise RegistryError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
        self.get(version)
        self.conn.execute("UPDATE model_versions SET status = ?, notes = coalesce(?, notes), updated_at = now() "
                          "WHERE version = ?", [status, notes, version])
        return self.get(version)

    def retire(self, version: str) -> ModelVersion:
        mv = self.get(version)
        if mv.status == "production":
            raise RegistryError(f"{version!r} is in production: promote another version first", 409)
        routed = [a for a, routes in self.routing_table().routes.items() if any(r.version == version and r.weight > 0 for r in routes)]
        if routed:
            raise RegistryError(f"{version!r} still takes traffic on {', '.join(routed)}: route it to 0 first", 409)
        return self.set_status(version, "retired")

    # -- routing -----------------------------------------------------------------------
    def routing_table(self) -> RoutingTable:
        row = self.conn.execute("SELECT revision, routes FROM routing_tables ORDER BY revision DESC LIMIT 1").fetchone()
        if row is None:
            return self._with_adapters(RoutingTable.single(self.alias, BASE_VERSION))
        return self._with_adapters(RoutingTable.from_dict({"revision": row[0], "routes": json.loads(row[1])}))

    def set_routes(self, alias: str, weights: dict[str, float], reason: str) -> RoutingTable:
        """A new revision where ``alias`` splits its traffic as ``weights`` (percent, in the
        order given: the candidate first keeps assignment sticky as its weight grows)."""
        for version in weights:
            mv = self.get(version)
            if mv.status in ("retired", "rolled_back") and weights[version] > 0:
                raise RegistryError(f"{version!r} is {mv.status}: it cannot take traffic", 409)
        current = self.routing_table()
        routes = dict(current.routes)
        routes[alias] = tuple(Route(v, float(w)) for v, w in weights.items())
        try:
            table = self._with_adapters(RoutingTable(current.revision + 1, routes))
        except RoutingError as e:
            raise RegistryError(str(e)) from None
        self.conn.execute("INSERT INTO routing_tables (revision, routes, reason) VALUES (?, ?, ?)",
                          [table.revision, json.dumps(table.to_dict()["routes"]), reason])
        return table

    def routing_history(self, limit: int = 20) -> list[dict]:
        rows = self.conn.execute("SELECT revision, routes, reason, created_at FROM routing_tables "
                                 "ORDER BY revision DESC LIMIT ?", [limit]).fetchall()
        return [{"revision": r, "routes": json.loads(t), "reason": why, "created_at": str(at)} for r, t, why, at in rows]

    def _with_adapters(self, table: RoutingTable) -> RoutingTable:
        versions = {r.version for routes in table.routes.values() for r in routes}
        adapters = {}
        for v in versions:
            row = self.conn.execute("SELECT adapter_path FROM model_versions WHERE version = ?", [v]).fetchone()
            if row and row[0]:
                adapters[v] = row[0]
        return RoutingTable(table.revision, table.routes, adapters)

    @staticmethod
    def _row(row) -> ModelVersion:
        return ModelVersion(*[str(x) if isinstance(x, datetime) else x for x in row])


_SELECT = ("SELECT version, base_model, adapter_path, parent_version, dataset, training_run, status, notes, "
           "created_at, updated_at FROM model_versions")
