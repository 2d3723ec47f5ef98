"""Routing: weighted sticky assignment, atomic table changes, the registry's routing
history, and gateways that keep routing from their cached table."""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serving.backends.scripted import ScriptedBackend
from serving.registry import Registry, RegistryError
from serving.routing import Route, Router, RoutingError, RoutingTable
from services.control.migrations import ALL
from services.control.plane import ControlPlane
from streams.warehouse import apply_migrations, connect
from tests.conftest import wait_for

ALIAS = "flywheel-chat"


def table(revision: int, **weights: float) -> RoutingTable:
    return RoutingTable(revision, {ALIAS: tuple(Route(v, w) for v, w in weights.items())})


def test_weights_90_10_over_2000_users_are_binomial_and_sticky():
    t = table(1, cand=10, base=90)
    users = [f"user-{i}" for i in range(2000)]
    first = {u: t.choose(ALIAS, u) for u in users}
    share = sum(v == "cand" for v in first.values()) / len(users)
    sd = math.sqrt(0.1 * 0.9 / len(users))
    assert abs(share - 0.10) < 4 * sd, share  # 4 standard deviations: fails ~1 in 16,000 seeds
    assert all(t.choose(ALIAS, u) == v for u, v in first.items())  # the same user, the same version
    # Raising the canary only moves users from production to the canary, never back.
    t25 = table(2, cand=25, base=75)
    assert all(t25.choose(ALIAS, u) == "cand" for u, v in first.items() if v == "cand")
    assert abs(sum(t25.choose(ALIAS, u) == "cand" for u in users) / len(users) - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 2000)
    assert table(3, cand=0, base=100).choose(ALIAS, "anyone") == "base"
    assert t.choose("other-alias", "u") is None


@pytest.mark.parametrize("routes, message", [
    ({ALIAS: (Route("a", 50), Route("b", 40))}, "add up to 90"),
    ({ALIAS: (Route("a", 50), Route("a", 50))}, "twice"),
    ({ALIAS: ()}, "no versions"),
    ({ALIAS: (Route("a", 110), Route("b", -10))}, "negative"),
])
def test_bad_tables_are_refused(routes, message):
    with pytest.raises(RoutingError, match=message):
        RoutingTable(1, routes)


def test_router_applies_newer_tables_atomically_and_caches_them(tmp_path):
    cache = tmp_path / "routing.json"
    router = Router(RoutingTable.single(ALIAS, "base"), cache_path=cache)
    assert router.apply(table(2, cand=50, base=50))
    assert not router.apply(table(1, cand=100))  # older revisions never win
    assert router.table.revision == 2
    # A new router (a restarted gateway) starts from the cache.
    assert Router(RoutingTable.single(ALIAS, "base"), cache_path=cache).table.revision == 2
    # A table whose preparation fails (e.g. an adapter that does not load) is not installed.
    def refuse(t):
        raise RoutingError("adapter does not load")
    failing = Router(RoutingTable.single(ALIAS, "base"), prepare=refuse)
    with pytest.raises(RoutingError):
        failing.apply(table(5, cand=100))
    assert failing.table.revision == 0


def test_requests_see_one_table_while_tables_change(settings, start_gateway):
    backend = ScriptedBackend(versions=[f"v{i}" for i in range(1, 21)])
    gw = start_gateway(settings, backend)
    router = gw.gw.router
    router.apply(RoutingTable(1, {ALIAS: (Route("v1", 100),)}))  # before any client: "base" is not served here
    stop = threading.Event()

    def client(k):
        seen = []
        c = httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {gw.tokens['chat']}"})
        while not stop.is_set():
            r = c.post("/v1/chat/completions", json={"model": ALIAS, "messages": [{"role": "user", "content": "hi"}],
                                                     "user": f"u{k}"})
            assert r.status_code == 200, r.text
            seen.append(int(r.json()["system_fingerprint"].split(":v")[1]))
        return seen

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(client, k) for k in range(6)]
        for rev in range(2, 21):  # revision k sends everyone to v{k}
            router.apply(RoutingTable(rev, {ALIAS: (Route(f"v{rev}", 100),)}))
            time.sleep(0.05)
        stop.set()
        seen = [f.result() for f in futures]
    for s in seen:
        assert s and s == sorted(s)  # each client only ever moves forward through the revisions
    assert max(max(s) for s in seen) == 20


def _registry(tmp_path, conn=None):
    conn = conn or connect(":memory:")
    apply_migrations(conn, ALL)
    reg = Registry(conn, models_dir=tmp_path / "models", base_model="SmolLM2-135M-Instruct", alias=ALIAS,
                   base_model_dir=lambda: tmp_path, check=lambda base, adapter: None)
    reg.ensure_base()
    return reg


def _adapter(tmp_path, name="a"):
    d = tmp_path / f"src-{name}"
    d.mkdir()
    (d / "adapter_config.json").write_text("{}")
    return d


def test_registry_versions_are_immutable_and_routing_is_recorded(tmp_path):
    reg = _registry(tmp_path)
    assert [m.version for m in reg.list()] == ["base"] and reg.get("base").status == "production"
    mv = reg.register("cand-1", _adapter(tmp_path), parent="base", notes="first")
    assert mv.status == "candidate" and mv.adapter_path == str(tmp_path / "models" / "cand-1")
    assert (tmp_path / "models" / "cand-1" / "adapter_config.json").exists()
    with pytest.raises(RegistryError, match="immutable"):
        reg.register("cand-1", _adapter(tmp_path, "b"))
    for bad in ("Cand", "base", "a b", "x" * 65):
        with pytest.raises(RegistryError, match="invalid version name"):
            reg.register(bad, _adapter(tmp_path, bad.replace(" ", "_")[:10] + "x"))
    with pytest.raises(RegistryError, match="no model version"):
        reg.register("cand-2", _adapter(tmp_path, "c"), parent="nope")
    t = reg.set_routes(ALIAS, {"cand-1": 10, "base": 90}, reason="canary 10%")
    assert t.revision == 1 and t.adapters == {"cand-1": str(tmp_path / "models" / "cand-1")}
    with pytest.raises(RegistryError, match="takes traffic"):
        reg.retire("cand-1")
    with pytest.raises(RegistryError, match="production"):
        reg.retire("base")
    with pytest.raises(RegistryError, match="add up to"):
        reg.set_routes(ALIAS, {"cand-1": 10}, reason="bad")
    reg.set_routes(ALIAS, {"cand-1": 0, "base": 100}, reason="rollback")
    assert reg.retire("cand-1").status == "retired"
    with pytest.raises(RegistryError, match="retired"):
        reg.set_routes(ALIAS, {"cand-1": 50, "base": 50}, reason="no")
    history = reg.routing_history()
    assert [h["reason"] for h in history] == ["rollback", "canary 10%"]


def test_gateway_keeps_routing_from_its_cache_with_the_control_plane_stopped(settings, start_gateway, tmp_path):
    s = settings.replace(gateway={"routing_poll_s": 0.2})
    plane = ControlPlane(s).start()
    try:
        with plane.reader() as cur:
            reg = Registry(cur, models_dir=s.data_path / "models", base_model="SmolLM2-135M-Instruct", alias=ALIAS,
                           base_model_dir=lambda: tmp_path, check=lambda base, adapter: None)
            reg.register("cand-1", _adapter(tmp_path))
            reg.set_routes(ALIAS, {"cand-1": 50, "base": 50}, reason="canary 50%")
        backend = ScriptedBackend()
        first = start_gateway(s, backend)
        wait_for(lambda: first.gw.router.table.revision == 1, timeout=10, what="the gateway to follow the control plane")
        assert backend.adapter_paths == {"cand-1": str(s.data_path / "models" / "cand-1")}  # loaded before routing
    finally:
        plane.stop(drain=False)
    first.stop(drain_timeout=0.5)

    # Control plane gone: a restarted gateway routes from its cached table.
    second = start_gateway(s, ScriptedBackend())
    assert second.gw.router.table.revision == 1
    client = second.client()
    versions = {client.chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": "hi"}],
                                               user=f"user-{i}").system_fingerprint.split(":")[1] for i in range(40)}
    assert versions == {"base", "cand-1"}
    time.sleep(0.5)
    assert second.gw.router.last_error  # it did try the control plane, and kept serving
