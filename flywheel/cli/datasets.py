"""`flywheel datasets`: versioned SFT/DPO datasets (library: training/datasets/)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from flywheel.cli._common import ask, console, read_db, settings_of, with_db


@click.group()
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

    s = settings_of(ctx)

    def build_here() -> dict:
        try:
            return with_db(s, lambda conn: build_dataset(conn, s, progress=lambda m: console.print(f"  {m}")).to_dict())
        except DatasetError as e:
            raise click.ClickException(str(e)) from None

    built = ask(s, "POST", "/api/datasets", {}, local=build_here)
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

    s = settings_of(ctx)
    rows = ask(s, "GET", "/api/datasets", key="data", local=lambda: read_db(s, list_datasets))
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

    s = settings_of(ctx)

    def read_here() -> dict:
        try:
            return read_db(s, lambda conn: get_dataset(conn, version))
        except DatasetError as e:
            raise click.ClickException(str(e)) from None

    _print_dataset(ask(s, "GET", f"/api/datasets/{version}", local=read_here))


@datasets.command("export")
@click.argument("version")
@click.option("--format", "fmt", type=click.Choice(["trl", "alpaca", "sharegpt", "ms-swift"]), default="trl",
              show_default=True, help="trl: messages and prompt/chosen/rejected; the others: SFT and eval only. "
              "Tools and tool calls: kept by trl, sharegpt (LLaMA-Factory's tools/function_call/observation) and "
              "ms-swift (messages with tools/tool_call/tool_response); alpaca has no form for them and leaves such "
              "records out, counted.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Folder to write VERSION-SPLIT.FORMAT.jsonl files into.")
@click.pass_context
def datasets_export(ctx, version: str, fmt: str, out_dir: str) -> None:
    """Export a version's splits to JSONL in another tool's format. Records the format cannot
    hold (alpaca: records with tools) are left out and counted."""
    from training.datasets.builder import export_dataset
    from training.datasets.snapshot import snapshot_dir
    from training.errors import TrainingError

    s = settings_of(ctx)
    folder = Path(version) if Path(version).is_dir() else snapshot_dir(s.data_path, version)
    try:
        result = export_dataset(folder, fmt, out_dir)
    except TrainingError as e:
        raise click.ClickException(str(e)) from None
    for split, path in result.files.items():
        console.print(f"{split}: {path}")
    for split, reasons in result.skipped.items():
        for why, n in reasons.items():
            console.print(f"[yellow]{split}: left out {n} record{'s' if n != 1 else ''}: {why}[/]")
