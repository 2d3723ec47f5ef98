"""`flywheel status` and `flywheel metrics`: what landed, and the live per-version windows."""

from __future__ import annotations

import json

import click
from rich.table import Table

from flywheel.cli._common import ask, console, kv_table, read_db, settings_of


def print_status(s) -> None:
    from services.control.status import collect_status

    st = collect_status(s)
    table = kv_table(f"flywheel status (from the {st['source']})")
    for name, count in st["tables"].items():
        table.add_row(f"rows in {name}", str(count))
    gw = st["gateway"]
    table.add_row("gateway", gw["status"] if gw["reachable"] else "not reachable")
    table.add_row("spool depth (events)", "-" if gw["spool_depth"] is None else str(gw["spool_depth"]))
    table.add_row("landing lag (events)", "-" if st["landing_lag_events"] is None else str(st["landing_lag_events"]))
    dead = st["dead_letters"]
    table.add_row("dead-lettered events", str(dead["count"]) + (f" (in {', '.join(f for f, n in dead['files'].items() if n)})"
                                                                 if dead["count"] else ""))
    table.add_row("last event at", st["last_event_at"] or "-")
    table.add_row("last landed at", st["last_landed_at"] or "-")
    if st.get("error"):
        table.add_row("error", st["error"])
    console.print(table)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Rows landed per table, spool depth, landing lag, last event time."""
    s = settings_of(ctx)
    if as_json:
        from services.control.status import collect_status

        click.echo(json.dumps(collect_status(s), indent=2))
    else:
        print_status(s)


@click.command("metrics")
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

    s = settings_of(ctx)
    args = {k: v for k, v in {"alias": alias, "version": version, "minutes": str(minutes)}.items() if v}
    try:
        filters = metrics_filters(args)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    windows = ask(s, "GET", "/api/metrics?" + urllib.parse.urlencode(args), key="data",
                  local=lambda: read_db(s, lambda conn: read_windows(conn, **filters)))
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
