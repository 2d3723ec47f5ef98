"""The `flywheel` command. Commands stay thin: parse, call one library function, print."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from flywheel.errors import FlywheelError
from flywheel.settings import describe_settings, load_settings, settings_markdown

console = Console(stderr=False)
DEV_KEYS_FILE = "dev_api_keys.json"


def _settings(ctx: click.Context):
    return ctx.obj["settings"]


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "werkzeug", "httpx", "httpx2", "openai", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FlywheelError as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="FLYWHEEL_CONFIG",
              help="Settings file (TOML). Default: ./flywheel.toml if present. FLYWHEEL_* variables override it.")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Flywheel: capture chat traffic and feedback, land it in DuckDB, and (later issues)
    turn it into a better model.

    Start the whole local stack with `flywheel up`; see `flywheel COMMAND --help`."""
    try:
        settings = load_settings(config_path)
    except FlywheelError as e:
        raise click.ClickException(str(e)) from None
    if config_path:
        os.environ["FLYWHEEL_CONFIG"] = str(Path(config_path).resolve())  # children read the same file
    _setup_logging(settings.log_level)
    ctx.obj = {"settings": settings}


# -- the stack -----------------------------------------------------------------------
@main.command()
@click.option("--simulate", "simulate_s", type=float, default=0, show_default=True,
              help="After start-up, send simulated traffic for this many seconds, then print the status.")
@click.option("--refresh", "refresh_after", is_flag=True,
              help="After the simulation, run one turn of the flywheel (mine, dataset, train, evaluate, canary) and "
              "show its steps.")
@click.option("--exit-after-simulate", is_flag=True,
              help="Stop the stack after the simulation (and the turn) instead of waiting for Ctrl-C.")
@click.pass_context
def up(ctx: click.Context, simulate_s: float, refresh_after: bool, exit_after_simulate: bool) -> None:
    """Run the stack: embedded broker (unless kafka.bootstrap is set), topics, control plane
    (landing), stream worker (live metrics), gateway. Ctrl-C or SIGTERM stops it cleanly: the
    gateway drains its spool, the stream worker publishes its last figures, landing lands
    everything produced, then the broker stops."""
    from flywheel.stack import Stack

    s = _settings(ctx)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = Stack(s, console=console)
    code = 0
    try:
        stack.start()
        console.print(f"[bold green]flywheel is up[/]: gateway {s.gateway_url}/v1  console {s.control_url}/console/  "
                      f"data {s.data_path}")
        console.print(f"API keys for local use: {s.data_path / DEV_KEYS_FILE}.  Stop with Ctrl-C.")
        if simulate_s > 0 and not stop.is_set():
            _run_simulation(s, duration_s=simulate_s, stop=stop)
            time.sleep(2.0)  # let landing catch up before the figures
            _print_status(s)
        if refresh_after and not stop.is_set():
            console.print("one turn of the flywheel (training and evaluation run as jobs; logs in "
                          f"{s.data_path / 'logs' / 'refresh'})")
            _follow_refresh(s, _control(s, "POST", "/api/refresh", {})["run_id"], stop)
        if exit_after_simulate:
            stop.set()
        dead = stack.wait(stop)
        if dead is not None:
            console.print(f"[red]{dead.name} exited unexpectedly (code {dead.proc.returncode}); see {dead.log_path}[/]")
            code = 1
    finally:
        console.print("stopping: gateway (draining its spool), stream worker, control plane (landing what was "
                      "produced), broker")
        stack.stop()
        console.print("stopped.")
    sys.exit(code)


@main.command("gateway")
@click.pass_context
def gateway_cmd(ctx: click.Context) -> None:
    """Run the OpenAI-compatible gateway (gunicorn) on gateway.host:gateway.port."""
    from services.gateway.server import serve

    serve(_settings(ctx))


@main.command("control-plane")
@click.pass_context
def control_plane_cmd(ctx: click.Context) -> None:
    """Run the control plane: migrations, landing consumer (Kafka -> DuckDB), JSON API."""
    from services.control.plane import ControlPlane

    s = _settings(ctx)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    plane = ControlPlane(s).start()
    logging.getLogger("flywheel").info("control plane up on %s", s.control_url)
    plane.wait(stop)
    plane.stop(drain=True)
    if plane.failed is not None:
        raise click.ClickException(f"landing failed: {plane.failed}")


# -- inspection ----------------------------------------------------------------------
@main.command("stream-worker")
@click.pass_context
def stream_worker_cmd(ctx: click.Context) -> None:
    """Run the faust stream worker: live per-version window figures (requests, errors,
    latency, feedback) from the interactions and feedback topics to the metrics topic."""
    from streams.stream_worker import run_worker

    run_worker(_settings(ctx))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Rows landed per table, spool depth, landing lag, last event time."""
    s = _settings(ctx)
    if as_json:
        from services.control.status import collect_status

        click.echo(json.dumps(collect_status(s), indent=2))
    else:
        _print_status(s)


@main.command("metrics")
@click.option("--alias", default=None, help="Only this alias.")
@click.option("--version", "version", default=None, help="Only this model version.")
@click.option("--minutes", type=float, default=60, show_default=True, help="Windows that started this long ago or later.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def metrics_cmd(ctx, alias, version, minutes, as_json) -> None:
    """Live per-version windows from the stream worker: requests, errors, latency p50/p95,
    thumbs, ratings, regenerations, draft choices, edits."""
    import urllib.parse

    from streams.live_metrics import metrics_filters, read_windows

    s = _settings(ctx)
    args = {k: v for k, v in {"alias": alias, "version": version, "minutes": str(minutes)}.items() if v}
    try:
        filters = metrics_filters(args)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    answer = _control(s, "GET", "/api/metrics?" + urllib.parse.urlencode(args))
    if answer is not None:
        windows = answer["data"]
    else:
        windows = _read_db(s, lambda conn: read_windows(conn, **filters))
    if as_json:
        click.echo(json.dumps(windows, indent=2, default=str))
        return
    table = Table(title=f"live metrics, last {minutes:g} min ({len(windows)} windows)")
    for col in ("window", "alias", "version", "req", "err", "p50 ms", "p95 ms", "up", "down", "ratings", "regen",
                "choices", "edits"):
        table.add_column(col, justify="left" if col in ("window", "alias", "version") else "right")
    fmt = lambda x: "-" if x is None else f"{x:.0f}"  # noqa: E731
    for w in windows:
        table.add_row(w["window_start"][:16], w["alias"], w["model_version"], str(w["requests"]), str(w["errors"]),
                      fmt(w["latency_p50_ms"]), fmt(w["latency_p95_ms"]), str(w["thumbs_up"]), str(w["thumbs_down"]),
                      str(w["ratings"]), str(w["regenerations"]), str(w["choices"]), str(w["edits"]))
    console.print(table)


def _read_db(s, fn):
    """Run ``fn(conn)`` on the DuckDB file read-only (no control plane is running)."""
    from streams.warehouse import connect

    if not s.db_path.exists():
        raise click.ClickException(f"no database at {s.db_path}: start the stack with `flywheel up`")
    try:
        conn = connect(s.db_path, read_only=True)
    except Exception as e:  # noqa: BLE001 - typically locked by a control plane we cannot reach
        raise click.ClickException(f"cannot open {s.db_path} ({e}); is a control plane running elsewhere?") from None
    with conn:
        try:
            return fn(conn)
        except Exception as e:  # noqa: BLE001 - e.g. a database from before the live_metrics migration
            raise click.ClickException(f"cannot read {s.db_path}: {e}") from None


def _print_status(s) -> None:
    from services.control.status import collect_status

    st = collect_status(s)
    table = Table(title=f"flywheel status (from the {st['source']})")
    table.add_column("what")
    table.add_column("value", justify="right")
    for name, count in st["tables"].items():
        table.add_row(f"rows in {name}", str(count))
    gw = st["gateway"]
    table.add_row("gateway", gw["status"] if gw["reachable"] else "not reachable")
    table.add_row("spool depth (events)", "-" if gw["spool_depth"] is None else str(gw["spool_depth"]))
    table.add_row("landing lag (events)", "-" if st["landing_lag_events"] is None else str(st["landing_lag_events"]))
    table.add_row("last event at", st["last_event_at"] or "-")
    table.add_row("last landed at", st["last_landed_at"] or "-")
    if st.get("error"):
        table.add_row("error", st["error"])
    console.print(table)


@main.command()
@click.option("--event", help="Only this event type (interaction, feedback, ...).")
def schema(event: str | None) -> None:
    """Print the JSON Schema of every event (for producers outside Python)."""
    from streams.schemas import json_schemas

    schemas = json_schemas()
    if event is not None and event not in schemas:
        raise click.BadParameter(f"unknown event {event!r}; known: {', '.join(schemas)}", param_hint="--event")
    click.echo(json.dumps(schemas[event] if event else schemas, indent=2))


@main.command("config")
@click.option("--describe", is_flag=True, help="List every setting with its default and meaning.")
@click.option("--markdown", is_flag=True, help="The same as a Markdown table (the one in docs/settings.md).")
@click.pass_context
def config_cmd(ctx: click.Context, describe: bool, markdown: bool) -> None:
    """Print the effective settings (defaults < file < FLYWHEEL_* environment)."""
    if markdown:
        click.echo(settings_markdown(), nl=False)
    elif describe:
        for key, default, text in describe_settings():
            click.echo(f"{key} = {default}\n    {text}")
    else:
        click.echo(_settings(ctx).model_dump_json(indent=2))


# -- traffic -------------------------------------------------------------------------
@main.command()
@click.option("--duration", type=float, default=60, show_default=True, help="Seconds of traffic.")
@click.option("--sessions", type=int, default=None, help="Stop after this many sessions instead.")
@click.option("--concurrency", type=int, default=4, show_default=True, help="Sessions in parallel.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed: the same seed gives the same traffic.")
@click.option("--base-url", default=None, help="Gateway base URL. Default: the configured gateway's /v1.")
@click.option("--api-key", envvar="FLYWHEEL_API_KEY", default=None, help="Chat API key. Default: the local dev key.")
@click.option("--manifest", type=click.Path(dir_okay=False), default=None,
              help="Where to write the ground truth (JSONL). Default: DATA_DIR/simulations/seed-N.jsonl.")
@click.option("--max-tokens", type=int, default=200, show_default=True, help="max_tokens of each request.")
@click.pass_context
def simulate(ctx, duration, sessions, concurrency, seed, base_url, api_key, manifest, max_tokens) -> None:
    """Play the demo domain's users against the gateway with the openai client: chart-config
    and other tasks, messy prompts, honest/random/reverse raters, draft choices and edits."""
    s = _settings(ctx)
    report = _run_simulation(s, duration_s=duration if sessions is None else None, max_sessions=sessions,
                             concurrency=concurrency, seed=seed, base_url=base_url, api_key=api_key,
                             manifest=manifest, max_tokens=max_tokens)
    if report is not None and getattr(report, "requests", 0) and getattr(report, "errors", 0) == report.requests:
        raise click.ClickException("every request failed: is the gateway up (`flywheel up`) and the key right?")


def _run_simulation(s, *, duration_s=None, max_sessions=None, concurrency=4, seed=0, base_url=None, api_key=None,
                    manifest=None, max_tokens=200, stop: threading.Event | None = None):
    from flywheel.simulate import run_simulation

    api_key = api_key or dev_key(s, "chat")
    manifest_path = Path(manifest) if manifest else s.data_path / "simulations" / f"seed-{seed}.jsonl"
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    console.print(f"simulating traffic: seed {seed}, concurrency {concurrency}, "
                  f"{f'{duration_s:.0f}s' if duration_s else f'{max_sessions} sessions'}; truth in {manifest_path}")
    report = run_simulation(base_url or f"{s.gateway_url}/v1", api_key or "", seed=seed, duration_s=duration_s,
                            max_sessions=max_sessions, concurrency=concurrency, manifest_path=manifest_path,
                            max_tokens=max_tokens, progress=True)
    _print_report(report)
    return report


def _print_report(report) -> None:
    table = Table(title="simulated traffic")
    table.add_column("what")
    table.add_column("value", justify="right")
    d = report.to_dict()
    for key in ("sessions", "requests", "errors", "elapsed_s", "chart_drafts", "chart_correct", "chart_accuracy",
                "feedback_errors"):
        if key in d:
            table.add_row(key.replace("_", " "), str(d[key]))
    for group in ("feedback", "requests_by_task", "requests_by_persona"):
        for name, value in sorted((d.get(group) or {}).items()):
            table.add_row(f"{group.replace('_', ' ')}: {name}", str(value))
    console.print(table)


# -- models and routing -------------------------------------------------------------
def _control(s, method: str, path: str, body: dict | None = None):
    """Call the running control plane's API (the DuckDB writer); None if none is running.
    Without one, the command opens DuckDB itself (it is then the only writer)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"{s.control_url}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"control plane answered {e.code}"
        raise click.ClickException(message) from None
    except OSError:
        return None


def _with_registry(s, fn):
    from serving.registry import Registry, RegistryError
    from services.control.migrations import ALL
    from streams.warehouse import apply_migrations, connect

    try:
        conn = connect(s.db_path)
    except Exception as e:  # noqa: BLE001 - typically: locked by a control plane we cannot reach
        raise click.ClickException(f"cannot open {s.db_path} ({e}); is a control plane running elsewhere?") from None
    with conn:
        apply_migrations(conn, ALL)
        registry = Registry.from_settings(conn, s)
        registry.ensure_base()
        try:
            return fn(registry)
        except RegistryError as e:
            raise click.ClickException(str(e)) from None


@main.group()
def models() -> None:
    """The model registry: the base model and LoRA adapter versions."""


@models.command("list")
@click.pass_context
def models_list(ctx) -> None:
    """List versions with their status."""
    s = _settings(ctx)
    data = _control(s, "GET", "/api/models")
    rows = data["data"] if data is not None else _with_registry(s, lambda r: [m.to_dict() for m in r.list()])
    table = Table(title="model versions")
    for col in ("version", "status", "parent", "created", "notes"):
        table.add_column(col)
    for m in rows:
        table.add_row(m["version"], m["status"], m["parent_version"] or "-", m["created_at"][:19], m["notes"] or "")
    console.print(table)


@models.command("show")
@click.argument("version")
@click.pass_context
def models_show(ctx, version: str) -> None:
    """Show one version as JSON."""
    s = _settings(ctx)
    data = _control(s, "GET", f"/api/models/{version}")
    click.echo(json.dumps(data if data is not None else _with_registry(s, lambda r: r.get(version).to_dict()), indent=2))


@models.command("register")
@click.argument("version")
@click.argument("adapter_path", type=click.Path(exists=True, file_okay=False))
@click.option("--parent", help="The version it was trained from.")
@click.option("--notes", help="Free text.")
@click.pass_context
def models_register(ctx, version: str, adapter_path: str, parent: str | None, notes: str | None) -> None:
    """Register a PEFT LoRA adapter folder as VERSION (a candidate). It is copied under
    DATA_DIR/models and must load on the base model."""
    s = _settings(ctx)
    body = {"version": version, "adapter_path": str(Path(adapter_path).resolve()), "parent": parent, "notes": notes}
    data = _control(s, "POST", "/api/models", body)
    if data is None:
        data = _with_registry(s, lambda r: r.register(version, Path(adapter_path), parent=parent, notes=notes).to_dict())
    click.echo(f"registered {data['version']} ({data['status']}) at {data['adapter_path']}")


@models.command("retire")
@click.argument("version")
@click.pass_context
def models_retire(ctx, version: str) -> None:
    """Retire a version that takes no traffic."""
    s = _settings(ctx)
    data = _control(s, "POST", f"/api/models/{version}/retire", {})
    if data is None:
        data = _with_registry(s, lambda r: r.retire(version).to_dict())
    click.echo(f"{data['version']} is {data['status']}")


@main.group()
def routes() -> None:
    """The routing table: which versions serve each alias, and with what weight."""


@routes.command("show")
@click.pass_context
def routes_show(ctx) -> None:
    """Print the current routing table as JSON."""
    s = _settings(ctx)
    data = _control(s, "GET", "/api/routing")
    click.echo(json.dumps(data if data is not None else _with_registry(s, lambda r: r.routing_table().to_dict()), indent=2))


@routes.command("set")
@click.argument("alias")
@click.argument("weights", nargs=-1, required=True)
@click.option("--reason", default="set by an operator", help="Recorded with the new revision.")
@click.pass_context
def routes_set(ctx, alias: str, weights: tuple[str, ...], reason: str) -> None:
    """Split ALIAS's traffic: VERSION=PERCENT ... (adding up to 100; list the canary first).
    Gateways pick the new table up within gateway.routing_poll_s."""
    parsed = {}
    for item in weights:
        version, sep, pct = item.partition("=")
        try:
            parsed[version] = float(pct)
        except ValueError:
            sep = ""
        if not sep:
            raise click.BadParameter(f"{item!r}: write VERSION=PERCENT", param_hint="WEIGHTS")
    s = _settings(ctx)
    data = _control(s, "POST", "/api/routing", {"alias": alias, "weights": parsed, "reason": reason})
    if data is None:
        data = _with_registry(s, lambda r: r.set_routes(alias, parsed, reason).to_dict())
    click.echo(f"routing revision {data['revision']}: " + ", ".join(
        f"{r['version']}={r['weight']:g}%" for r in data["routes"][alias]))


@main.group()
def rollout() -> None:
    """Canary rollouts: a candidate takes a growing, sticky share of an alias's traffic and
    is promoted or rolled back on live feedback (run by the control plane)."""


def _rollout_call(ctx, method: str, path: str, body: dict | None = None) -> dict:
    s = _settings(ctx)
    data = _control(s, method, path, body)
    if data is None:
        raise click.ClickException(f"no control plane at {s.control_url}: rollouts run there (`flywheel up`)")
    return data


def _print_rollout(d: dict) -> None:
    weights = ", ".join(f"{v}={w:g}%" for v, w in d["weights"].items())
    click.echo(f"{d['alias']}: {d['candidate']} vs {d['production']} is {d['status']} "
               f"(step {d['step_index'] + 1}, {weights}; failures {d['failures']}, inconclusive {d['inconclusive']})")
    if d.get("last_decision"):
        click.echo(f"last decision: {d['last_decision']['action']}: {d['last_decision']['reason']}")


@rollout.command("start")
@click.argument("candidate")
@click.option("--alias", default=None, help="The alias to roll out on. Default: model.alias.")
@click.pass_context
def rollout_start(ctx, candidate: str, alias: str | None) -> None:
    """Start rolling CANDIDATE out (first step of rollout.steps)."""
    _print_rollout(_rollout_call(ctx, "POST", "/api/rollouts", {"candidate": candidate, "alias": alias}))


@rollout.command("status")
@click.option("--alias", default=None, help="Default: model.alias.")
@click.pass_context
def rollout_status(ctx, alias: str | None) -> None:
    """The current rollout of an alias and its last decision."""
    _print_rollout(_rollout_call(ctx, "GET", f"/api/rollouts/{alias or _settings(ctx).model.alias}"))


def _rollout_action(action: str, help_text: str):
    @rollout.command(action, help=help_text)
    @click.option("--alias", default=None, help="Default: model.alias.")
    @click.option("--reason", default=None, help="Recorded in the deployment event.")
    @click.pass_context
    def command(ctx, alias: str | None, reason: str | None) -> None:
        path = f"/api/rollouts/{alias or _settings(ctx).model.alias}/{action}"
        _print_rollout(_rollout_call(ctx, "POST", path, {"reason": reason} if reason else {}))

    return command


_rollout_action("pause", "Hold the current weights; verdicts are ignored until resumed.")
_rollout_action("resume", "Resume a paused rollout.")
_rollout_action("promote", "Promote the candidate now (100%); the old production is kept for rollback.")
_rollout_action("rollback", "Send 100% back to the previous production version at once.")


# -- datasets ------------------------------------------------------------------------
@main.group()
def datasets() -> None:
    """Versioned SFT/DPO datasets built from curated, reviewed candidates."""


def _print_dataset(d: dict) -> None:
    counts = d["counts"]
    console.print(f"[bold]{d['version']}[/]: {counts.get('sft', 0)} SFT, {counts.get('dpo', 0)} DPO pairs, "
                  f"{counts.get('eval', 0)} held out  ({d['path']})")
    table = Table()
    table.add_column("task type")
    for split in ("sft", "dpo", "eval"):
        table.add_column(split, justify="right")
    types = sorted({t for split in d["task_types"].values() for t in split})
    for t in types:
        table.add_row(t, *(str(d["task_types"].get(split, {}).get(t, 0)) for split in ("sft", "dpo", "eval")))
    console.print(table)
    for reason, n in (d.get("excluded") or {}).items():
        console.print(f"  left out: {n} ({reason})")


@datasets.command("build")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_context
def datasets_build(ctx, as_json: bool) -> None:
    """Build the dataset of what is curated and reviewed now. The version is a hash of the
    content: the same input gives the same version (nothing is rewritten)."""
    from training.datasets.builder import build_dataset
    from training.errors import DatasetError

    s = _settings(ctx)
    built = _control(s, "POST", "/api/datasets", {})
    if built is None:
        try:
            built = _with_db(s, lambda conn: build_dataset(conn, s, progress=lambda m: console.print(f"  {m}")).to_dict())
        except DatasetError as e:
            raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(built, indent=2))
        return
    _print_dataset(built)
    console.print("new version" if built["created"] else "unchanged: this version existed already")


@datasets.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def datasets_list(ctx, as_json: bool) -> None:
    """The dataset versions, newest first."""
    from training.datasets.builder import list_datasets

    s = _settings(ctx)
    answer = _control(s, "GET", "/api/datasets")
    rows = answer["data"] if answer is not None else _read_db(s, list_datasets)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="datasets")
    for col in ("version", "created", "sft", "dpo", "eval", "task types"):
        table.add_column(col)
    for d in rows:
        table.add_row(d["version"], str(d["created_at"])[:19], *(str(d["counts"].get(k, 0)) for k in ("sft", "dpo", "eval")),
                      str(len(d["task_types"].get("sft", {}))))
    console.print(table)


@datasets.command("show")
@click.argument("version")
@click.pass_context
def datasets_show(ctx, version: str) -> None:
    """One version: counts per task type and split, where its files are."""
    from training.datasets.builder import get_dataset
    from training.errors import DatasetError

    s = _settings(ctx)
    d = _control(s, "GET", f"/api/datasets/{version}")
    if d is None:
        try:
            d = _read_db(s, lambda conn: get_dataset(conn, version))
        except DatasetError as e:
            raise click.ClickException(str(e)) from None
    _print_dataset(d)


@datasets.command("export")
@click.argument("version")
@click.option("--format", "fmt", type=click.Choice(["trl", "alpaca", "sharegpt", "ms-swift"]), default="trl",
              show_default=True, help="trl: messages and prompt/chosen/rejected; the others: SFT and eval only.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Folder to write VERSION-SPLIT.FORMAT.jsonl files into.")
@click.pass_context
def datasets_export(ctx, version: str, fmt: str, out_dir: str) -> None:
    """Export a version's splits to JSONL in another tool's format."""
    from training.datasets.builder import export_dataset
    from training.errors import TrainingError
    from training.datasets.snapshot import snapshot_dir

    s = _settings(ctx)
    folder = Path(version) if Path(version).is_dir() else snapshot_dir(s.data_path, version)
    try:
        written = export_dataset(folder, fmt, out_dir)
    except TrainingError as e:
        raise click.ClickException(str(e)) from None
    for split, path in written.items():
        console.print(f"{split}: {path}")


# -- the flywheel turn ---------------------------------------------------------------
def _print_refresh(run: dict) -> None:
    colour = {"finished": "green", "stopped": "yellow", "failed": "red"}.get(run["status"], "white")
    console.print(f"refresh [bold]{run['run_id']}[/]: [{colour}]{run['status']}[/]"
                  + (f" ({run['reason']})" if run.get("reason") else ""))
    for step in run["steps"]:
        console.print(f"  {step['name']:<9} {step['status']:<8} {step['detail']}")


@main.command("refresh")
@click.option("--list", "list_runs", is_flag=True, help="List recent flywheel turns instead of starting one.")
@click.option("--no-wait", is_flag=True, help="Start the turn and return at once.")
@click.pass_context
def refresh_cmd(ctx, list_runs: bool, no_wait: bool) -> None:
    """Run one turn of the flywheel in the control plane: mine what landed, build the dataset,
    train a candidate (SFT then DPO, a job in its own process), evaluate it against
    production, and start a canary rollout if the gate passes. The scheduler runs the same
    every refresh.interval_h hours."""
    s = _settings(ctx)
    answer = _control(s, "GET", "/api/refresh?limit=10")
    if answer is None:
        raise click.ClickException(f"no control plane at {s.control_url}: the flywheel turns there (`flywheel up`)")
    if list_runs:
        for run in answer["data"]:
            _print_refresh(run)
        if not answer["data"]:
            console.print("no flywheel turns yet")
        return
    run_id = _control(s, "POST", "/api/refresh", {})["run_id"]
    console.print(f"started refresh {run_id}")
    if not no_wait and _follow_refresh(s, run_id)["status"] == "failed":
        sys.exit(1)


def _follow_refresh(s, run_id: str, stop: threading.Event | None = None) -> dict:
    """Show a turn's steps as they start, until it ends (or ``stop`` is set); return it."""
    seen = 0
    while stop is None or not stop.is_set():
        time.sleep(2)
        answer = _control(s, "GET", "/api/refresh?limit=10")
        run = {r["run_id"]: r for r in (answer or {}).get("data", [])}.get(run_id)
        if run is None:
            continue
        for step in run["steps"][seen:]:
            console.print(f"  {step['name']} ...")
        seen = len(run["steps"])
        if run["status"] != "running":
            _print_refresh(run)
            return run
    return {"status": "interrupted"}


# -- evaluation ----------------------------------------------------------------------
@main.command("eval")
@click.option("--candidate", default=None, help="The version to evaluate (required unless --list).")
@click.option("--production", default=None, help="The version to compare with. Default: the one in production (else base).")
@click.option("--dataset", default=None, help="Dataset version (or snapshot folder) whose held-out split to use. "
              "Default: the one the candidate was trained on.")
@click.option("--list", "list_only", is_flag=True, help="List recorded evaluations (of --candidate) instead.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def eval_cmd(ctx, candidate, production, dataset, list_only, as_json) -> None:
    """Evaluate a candidate against production on the held-out split, per task type:
    reference loss, verifier pass rate, judge win rate (when judge.base_url is set),
    usability, with confidence intervals, a forgetting check and pass@k resampling of task
    types that seem to drop; then the gate's pass/fail with reasons. Writes report.json and
    report.html under DATA_DIR/evals/ and records the result. Exits 1 when the gate fails."""
    from serving.model_store import ensure_hf_model
    from training.errors import TrainingError
    from training.evaluation.evaluate import list_evaluations, record_evaluation, run_evaluation

    s = _settings(ctx)
    if not list_only and not candidate:
        raise click.UsageError("--candidate is required (or --list)")
    if list_only:
        answer = _control(s, "GET", "/api/evaluations" + (f"?candidate={candidate}" if candidate else ""))
        rows = answer["data"] if answer is not None else _read_db(s, lambda c: list_evaluations(c, candidate))
        for r in rows:
            console.print(f"{r['created_at'][:19]}  {r['candidate']} vs {r['production']}  "
                          f"{'[green]PASS[/]' if r['passed'] else '[red]FAIL[/]'}  {r['report_path']}")
        return
    answer = _control(s, "GET", "/api/models")
    versions = answer["data"] if answer is not None else _with_registry(s, lambda reg: [m.to_dict() for m in reg.list()])
    judge = None
    if s.judge.base_url:
        from training.evaluation.judge import judge_from_settings

        judge = judge_from_settings(s)
    try:
        report, folder = run_evaluation(s, versions, candidate, production=production, dataset=dataset,
                                        model_dir=ensure_hf_model(s.model_cache_path), judge=judge,
                                        progress=lambda m: console.print(f"  {m}"))
    except TrainingError as e:
        raise click.ClickException(str(e)) from None
    data = report.to_dict()
    if _control(s, "POST", "/api/evaluations", {"report": data, "folder": str(folder)}) is None:
        _with_db(s, lambda conn: record_evaluation(conn, data, folder))
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        table = Table(title=f"{report.candidate} vs {report.production} on {report.dataset}")
        for col in ("task type", "n", "Δ loss [95% CI]", "pass rate", "Δ usability", "verdict"):
            table.add_column(col, justify="left" if col in ("task type", "verdict") else "right")
        for t in report.types:
            table.add_row(t.task_type, str(t.n), f"{t.loss['delta']:+.3f} [{t.loss['ci'][0]:+.3f}, {t.loss['ci'][1]:+.3f}]",
                          f"{t.pass_rate['production']:.0%} → {t.pass_rate['candidate']:.0%}",
                          f"{t.usability['delta']:+.3f}", t.verdict)
        console.print(table)
        if report.general:
            console.print(f"general set reference loss: {report.general['production']:.3f} → "
                          f"{report.general['candidate']:.3f} ({report.general['relative']:+.1%})")
        if report.judge_agreement and report.judge_agreement.get("n"):
            ja = report.judge_agreement
            console.print(f"judge vs people: agrees on {ja['agreement']:.0%} of {ja['pairs']} preference pairs "
                          f"(ties {ja['tie_rate']:.0%}, kappa {ja['kappa']})")
        console.print(f"report: {folder / 'report.html'}")
    verdict = "[bold green]PASS[/]" if report.passed else "[bold red]FAIL[/]"
    console.print(f"gate: {verdict}: " + "; ".join(report.gate["reasons"]))
    if not report.passed:
        sys.exit(1)


# -- training ------------------------------------------------------------------------
@main.command()
@click.option("--dataset", required=True,
              help="Dataset snapshot version (a folder under DATA_DIR/datasets) or the path to a snapshot folder.")
@click.option("--parent", default=None,
              help="Continue this version's adapter. Default: the production version's (training.incremental).")
@click.option("--fresh", is_flag=True, help="Start a new LoRA on the base model instead of continuing production.")
@click.option("--run-id", default=None, help="Reuse this run folder under training.runs_dir: resumes a killed run "
              "from its last checkpoint.")
@click.option("--version", "version_name", default=None, help="Name of the candidate version. Default: ft-RUN_ID.")
@click.option("--set", "overrides", multiple=True, metavar="STAGE.SECTION.KEY=VALUE",
              help="Override a training config value, e.g. --set sft.args.max_steps=20 --set dpo.args.beta=0.2.")
@click.option("--no-register", is_flag=True, help="Train only; do not register the result as a candidate.")
@click.pass_context
def train(ctx, dataset, parent, fresh, run_id, version_name, overrides, no_register) -> None:
    """Fine-tune on a dataset snapshot: LoRA SFT then DPO (when the snapshot has pairs), as a
    job in its own process (`python -m training.trainers.job`; its progress is shown here and kept in
    RUN/job.log), then register the adapter as a `candidate` version with its dataset and
    run (through the control plane when it runs, else in the DuckDB file)."""
    from serving.model_store import ensure_hf_model
    from training.trainers.runner import candidate_name, plan_job, run_plan

    s = _settings(ctx)
    data = _control(s, "GET", "/api/models")
    versions = data["data"] if data is not None else _with_registry(s, lambda r: [m.to_dict() for m in r.list()])
    plan = plan_job(s, dataset, model_dir=ensure_hf_model(s.model_cache_path), versions=versions, parent=parent,
                    fresh=fresh, run_id=run_id, overrides=tuple(overrides))
    start = f"continuing {plan.parent_version} ({plan.parent_adapter})" if plan.parent_adapter else \
        f"fresh LoRA on the base model{f' (production is {plan.parent_version})' if plan.parent_version else ''}"
    console.print(f"training run [bold]{plan.run_id}[/] on dataset {plan.dataset}: {start}; output {plan.out_dir}")

    def echo(chunk: bytes) -> None:
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()

    run = run_plan(plan, echo=echo)
    table = Table(title=f"training run {plan.run_id}")
    table.add_column("what")
    table.add_column("value", justify="right")
    for stage, info in run["stages"].items():
        if info.get("status") == "done":
            table.add_row(f"{stage}: steps", str(info["steps"]))
            table.add_row(f"{stage}: tokens/s", f"{info['tokens_per_s']:.1f}")
            if info.get("train_loss"):
                table.add_row(f"{stage}: training loss first -> last",
                              f"{info['train_loss'][0]['loss']:.3f} -> {info['train_loss'][-1]['loss']:.3f}")
        else:
            table.add_row(stage, info.get("reason") or info.get("status", "-"))
    for task, loss in run.get("eval_loss_by_task", {}).items():
        table.add_row(f"eval loss: {task}", f"{loss:.3f}")
    console.print(table)
    if no_register:
        console.print(f"adapter in {run['adapter']} (not registered)")
        return
    version = version_name or candidate_name(plan.run_id)
    body = {"version": version, "adapter_path": run["adapter"], "parent": plan.parent_version,
            "dataset": plan.dataset, "training_run": plan.run_id, "notes": f"trained on {plan.dataset}"}
    reg = _control(s, "POST", "/api/models", body)
    if reg is None:
        reg = _with_registry(s, lambda r: r.register(version, Path(run["adapter"]), parent=plan.parent_version,
                                                     notes=body["notes"], dataset=plan.dataset,
                                                     training_run=plan.run_id).to_dict())
    console.print(f"registered [bold]{reg['version']}[/] ({reg['status']}) from run {plan.run_id}")


# -- keys ----------------------------------------------------------------------------
@main.group()
def keys() -> None:
    """Manage API keys (stored hashed in DATA_DIR/api_keys.json)."""


@keys.command("create")
@click.option("--role", type=click.Choice(["chat", "ingest", "admin"]), required=True,
              help="chat: chat + feedback; ingest: /v1/events; admin: all.")
@click.option("--name", default="", help="A label for the key.")
@click.pass_context
def keys_create(ctx, role: str, name: str) -> None:
    """Create a key and print it (the only time it is shown)."""
    from services.gateway.auth import KeyStore

    s = _settings(ctx)
    store = KeyStore.load(s.keys_path)
    token = store.create(role, name)
    store.save(s.keys_path)
    click.echo(token)


@keys.command("list")
@click.pass_context
def keys_list(ctx) -> None:
    """List keys (ids and roles; never the keys themselves)."""
    from services.gateway.auth import KeyStore

    for k in KeyStore.load(_settings(ctx).keys_path).keys:
        click.echo(f"{k.id}\t{k.role}\t{k.created_at}\t{k.name}")


@keys.command("revoke")
@click.argument("key_id")
@click.pass_context
def keys_revoke(ctx, key_id: str) -> None:
    """Revoke a key by id (restart gateways to apply)."""
    from services.gateway.auth import KeyStore

    s = _settings(ctx)
    store = KeyStore.load(s.keys_path)
    if not store.revoke(key_id):
        raise click.ClickException(f"no key with id {key_id}; see `flywheel keys list`")
    store.save(s.keys_path)
    click.echo(f"revoked {key_id}")


def ensure_dev_keys(s) -> dict[str, str]:
    """For the local stack: a chat and an ingest key, created once, their plain values kept
    in DATA_DIR/dev_api_keys.json (mode 600) for the simulator and for you."""
    from services.gateway.auth import KeyStore

    path = s.data_path / DEV_KEYS_FILE
    if path.exists():
        return json.loads(path.read_text())
    store = KeyStore.load(s.keys_path)
    plain = {role: store.create(role, name="dev") for role in ("chat", "ingest")}
    store.save(s.keys_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plain, indent=2))
    os.chmod(path, 0o600)
    return plain


def dev_key(s, role: str) -> str | None:
    path = s.data_path / DEV_KEYS_FILE
    return json.loads(path.read_text()).get(role) if path.exists() else None


# -- review queue (flywheel/review_cli.py) ---------------------------------------------
from flywheel.review_cli import review as _review  # noqa: E402 - its commands reach back into this module

main.add_command(_review)


if __name__ == "__main__":
    main()


# -- curation ------------------------------------------------------------------------
@main.command()
@click.option("--full", is_flag=True, help="Re-mine everything landed, ignoring the watermark.")
@click.option("--list", "list_runs", is_flag=True, help="List recent curation runs instead of starting one.")
@click.option("--show", "show_run", metavar="RUN", default=None, help="Print the funnel of run RUN instead of starting one.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_context
def mine(ctx, full: bool, list_runs: bool, show_run: str | None, as_json: bool) -> None:
    """Run a curation run: mine what landed since the last run, clean it, clean the users'
    labels, type, dedup and select it, queue it for review; then print the funnel (counts
    per stage and task type, and why items left). Runs in the control plane when one is
    running, else directly on the DuckDB file."""
    from training.curation import pipeline as curation

    s = _settings(ctx)
    if list_runs:
        data = _control(s, "GET", "/api/curation/runs")
        runs = data["data"] if data is not None else _with_db(s, curation.list_runs)
        if as_json:
            click.echo(json.dumps(runs, indent=2))
            return
        table = Table(title="curation runs")
        for col in ("run", "started", "status", "mined", "kept", "error"):
            table.add_column(col)
        for r in runs:
            table.add_row(r["run_id"], str(r["started_at"])[:19], r["status"], str(r["mined"] or "-"),
                          str(r["kept"] or "-"), (r.get("error") or "")[:60])
        console.print(table)
        return
    if show_run:
        run = _control(s, "GET", f"/api/curation/runs/{show_run}")
        if run is None:
            run = _with_db(s, lambda conn: curation.get_run(conn, show_run))
            if run is None:
                raise click.ClickException(f"no curation run {show_run!r}; list them with `flywheel mine --list`")
        _print_run(run, as_json)
        return
    started = _control(s, "POST", "/api/curation/runs", {"full": full})
    if started is not None:
        run = _follow_run(s, started["run_id"])
    else:
        with _Progress() as update:
            result = _with_db(s, lambda conn: curation.curate(conn, s, full=full, progress=update))
        run = _with_db(s, lambda conn: curation.get_run(conn, result.run_id))
    _print_run(run, as_json)
    if run.get("status") == "failed":
        raise click.ClickException(f"curation run {run['run_id']} failed: {run.get('error')}")


def _with_db(s, fn):
    """Run ``fn(conn)`` on the DuckDB file (no control plane runs, so this process is the writer)."""
    from services.control.migrations import ALL
    from streams.warehouse import apply_migrations, connect

    try:
        conn = connect(s.db_path)
    except Exception as e:  # noqa: BLE001 - typically: locked by a control plane we cannot reach
        raise click.ClickException(f"cannot open {s.db_path} ({e}); is a control plane running elsewhere?") from None
    with conn:
        apply_migrations(conn, ALL)
        return fn(conn)


class _Progress:
    """A rich progress bar driven by curate's (stage, done, total) callbacks."""

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=Console(stderr=True), transient=False)
        self.bar.start()
        self.tasks: dict[str, int] = {}
        return self.update

    def update(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=max(total, 1))
        self.bar.update(self.tasks[stage], completed=done if total else 1, total=max(total, 1))

    def __exit__(self, *exc):
        self.bar.stop()


def _follow_run(s, run_id: str) -> dict:
    with _Progress() as update:
        while True:
            run = _control(s, "GET", f"/api/curation/runs/{run_id}")
            if run is None:
                raise click.ClickException("the control plane stopped answering during the run")
            p = run.get("progress") or {}
            if p.get("stage"):
                update(p["stage"], p.get("done", 0), p.get("total", 0))
            if run.get("status") in ("finished", "failed"):
                return run
            time.sleep(0.5)


def _print_run(run: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(run, indent=2, default=str))
        return
    funnel = run.get("funnel") or {}
    console.print(f"curation run [bold]{run['run_id']}[/]: {run.get('status')}"
                  + (f" ({funnel.get('events', 0)} events, {funnel.get('sessions', 0)} sessions)" if funnel else ""))
    if not funnel:
        return
    stages = funnel["stages"]
    table = Table(title="funnel")
    for col in ("stage", "in", "out", "why items left"):
        table.add_column(col, justify="right" if col in ("in", "out") else "left")
    for st in stages:
        why = ", ".join(f"{k} {v}" for k, v in st["dropped"].items())
        table.add_row(st["stage"], str(st["in"]), str(st["out"]), why)
    console.print(table)
    by_type = Table(title="kept per task type, stage by stage")
    by_type.add_column("task type")
    for st in stages:
        by_type.add_column(st["stage"], justify="right")
    by_type.add_column("why items left (top 3)")
    why = funnel.get("dropped_by_task_type", {})
    for t, row in funnel["by_task_type"].items():
        top = ", ".join(f"{k} {v}" for k, v in list(why.get(t, {}).items())[:3])
        by_type.add_row(t, *(str(row.get(st["stage"], 0)) for st in stages), top)
    console.print(by_type)
    review = funnel.get("review") or {}
    extras = [f"{funnel.get('robust', 0)} tagged robust",
              f"dedup threshold {funnel.get('dedup', {}).get('threshold', '-')}",
              f"{funnel.get('orphan_feedback', 0)} feedback events wait for their request"]
    if review and not review.get("auto"):
        extras.append("auto review off (review.auto_approve)")
    elif review:
        extras.append("auto review: " + (review["error"] if "error" in review else
                                         ", ".join(f"{k} {v}" for k, v in review.items() if k != "auto") or "nothing"))
    console.print("; ".join(extras))
