"""`flywheel review`: the review queue of curation candidates (library: training/curation/review.py).

Reads go through the running control plane's API, else straight to DuckDB (read-only).
Decisions are review events produced to Kafka from this process (spool under the data
dir); with a control plane running the command waits until they have landed.
"""

from __future__ import annotations

import getpass
import json
import time
import urllib.parse
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from flywheel.cli._common import console, control, open_db, settings_of


class _Reader:
    """The queue's reads: over HTTP when a control plane runs (it holds the database),
    else from the DuckDB file opened read-only."""

    def __init__(self, s):
        self.s = s
        self.remote = control(s, "GET", "/healthz") is not None

    def _get(self, path: str, params: dict | None = None):
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        data = control(self.s, "GET", f"{path}{query}")
        if data is None:
            raise click.ClickException(f"the control plane at {self.s.control_url} stopped answering; try again")
        return data

    def _local(self, fn):
        with open_db(self.s, read_only=True,
                     missing=" yet: start the stack (`flywheel up`) and run `flywheel mine`") as conn:
            return fn(conn)

    def list(self, flt, full: bool = False) -> tuple[list[dict], dict]:
        from training.curation import review

        if self.remote:
            d = self._get("/api/review/candidates", {**flt.to_params(), **({"full": 1} if full else {})})
            return d["data"], d["counts"]
        return self._local(lambda c: (review.list_candidates(c, flt, full=full), review.count_states(c, flt)))

    def ids(self, flt) -> list[str]:
        from training.curation import review

        if self.remote:
            return self._get("/api/review/ids", flt.to_params())["ids"]
        return self._local(lambda c: review.select_ids(c, flt))

    def resolve(self, given: list[str]) -> list[str]:
        from training.curation import review

        if self.remote:
            return self._get("/api/review/resolve", {"ids": ",".join(given)})["ids"]
        return self._local(lambda c: review.resolve_ids(c, given))

    def get(self, candidate_id: str) -> dict:
        from training.curation import review

        if self.remote:
            return self._get(f"/api/review/candidates/{urllib.parse.quote(candidate_id)}")
        return self._local(lambda c: review.get_candidate(c, candidate_id))

    def all_ids(self) -> set[str]:
        from training.curation import review

        flt = review.ReviewFilter(status=None)
        return set(self.ids(flt))

    def landed(self, batch: str) -> int:
        return self._get(f"/api/review/landed/{batch}")["landed"]


def _filter_options(fn):
    for option in reversed([
        click.option("--task-type", help="A task type (data-viz/chart-config) or a whole group (data-viz)."),
        click.option("--state", type=click.Choice(["pending", "approved", "rejected", "edited"]), help="Review state."),
        click.option("--run", "run_id", help="Candidates of this curation run (see `flywheel mine --list`)."),
        click.option("--label", type=click.Choice(["good", "bad", "unknown"]), help="Cleaned label from the raters."),
        click.option("--status", type=click.Choice(["kept", "dropped", "all"]), default="kept", show_default=True,
                     help="Curation status: the queue holds the kept ones."),
        click.option("--limit", type=int, default=None, help="At most this many candidates."),
    ]):
        fn = option(fn)
    return fn


def _make_filter(task_type, state, run_id, label, status, limit, ids=()):
    from training.curation.review import ReviewFilter

    return ReviewFilter(task_type=task_type, state=state, run_id=run_id, label=label,
                        status=None if status == "all" else status, limit=limit, candidate_ids=tuple(ids))


def _short(text, n: int = 60) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


@click.group()
def review() -> None:
    """The review queue: mined candidates waiting for a person (or the auto rules) to
    approve, reject or edit them. Only approved and edited candidates reach the datasets.

    Decisions are review events through Kafka; the control plane lands them. Bulk
    decisions take the same filters as `list` (default: pending candidates only)."""


@review.command("list")
@_filter_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@click.pass_context
def review_list(ctx, task_type, state, run_id, label, status, limit, as_json) -> None:
    """List candidates with their review state, oldest first (default limit 50)."""
    reader = _Reader(settings_of(ctx))
    rows, counts = reader.list(_make_filter(task_type, state, run_id, label, status, limit or 50))
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, ensure_ascii=False, default=str))
        return
    table = Table(title="review queue (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")")
    for col in ("id", "state", "task type", "label", "source", "prompt", "response"):
        table.add_column(col, overflow="fold" if col == "id" else "ellipsis")
    for r in rows:
        conf = f" {r['label_confidence']:.2f}" if r.get("label_confidence") is not None else ""
        response = r["edited_response"] if r["state"] == "edited" else r["response"]
        table.add_row(r["candidate_id"][:12], r["state"], r["task_type"] or "-", f"{r['label'] or 'unknown'}{conf}",
                      r["response_source"] or "-", _short(r["prompt_text"], 50), _short(response, 50))
    console.print(table)
    if not rows:
        console.print("nothing matches; `flywheel mine` fills the queue")


@review.command("show")
@click.argument("candidate_id")
@click.option("--json", "as_json", is_flag=True, help="Print the full record as JSON.")
@click.pass_context
def review_show(ctx, candidate_id: str, as_json: bool) -> None:
    """One candidate in full: conversation, response, feedback, labels and every decision.
    CANDIDATE_ID may be a unique prefix."""
    reader = _Reader(settings_of(ctx))
    rec = reader.get(reader.resolve([candidate_id])[0])
    if as_json:
        click.echo(json.dumps(rec, ensure_ascii=False, indent=2, default=str))
        return
    console.print(f"[bold]{rec['candidate_id']}[/]  state [bold]{rec['state']}[/]  run {rec['run_id']}  "
                  f"task {rec['task_type']} ({rec.get('task_confidence') or 0:.2f})  "
                  f"label {rec['label']} ({rec.get('label_confidence') or 0:.2f})  status {rec['status']}"
                  + (f" ({rec['drop_reason']})" if rec.get("drop_reason") else ""))
    for m in rec.get("messages") or []:
        console.print(f"[cyan]{m['role']}:[/] " + escape(m["content"]))
    console.print(f"[green]response ({rec['response_source']}):[/] " + escape(str(rec["response"])))
    if rec.get("edited_response"):
        console.print("[magenta]edited response:[/] " + escape(rec["edited_response"]))
    console.print("feedback: " + escape(json.dumps(rec.get("feedback"), ensure_ascii=False)))
    for d in rec.get("decisions") or []:
        console.print(f"  {d['created_at'][:19]}  {d['action']:<8} by {d['reviewer']} ({d['source']})"
                      + (f": {d['reason']}" if d.get("reason") else ""))


def _send(s, events, reader: _Reader, verb: str) -> None:
    """Produce the decisions, wait for Kafka's acknowledgement and (with a control plane)
    for landing; say where they are."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from training.curation.review import ReviewEmitter

    if not events:
        console.print("no candidates matched: nothing decided")
        return
    batch = events[0].event_id.split("-")[1]
    wait = s.review.wait_landed_s
    with ReviewEmitter(s) as emitter:
        emitter.emit(events)
        with console.status(f"sending {len(events)} decisions to Kafka at {s.bootstrap}"):
            acked = emitter.flush(wait)
        left = emitter.depth
    if not acked:
        console.print(f"[yellow]{verb} {len(events)}: the broker did not acknowledge within {wait:.0f}s; {left} events "
                      f"wait in {s.data_path / 'spool-review'} and are sent by the next `flywheel review` command[/]")
        return
    if not reader.remote:
        console.print(f"{verb} {len(events)} candidate(s): sent to Kafka; no control plane is running, so they land "
                      "when it starts (`flywheel up`)")
        return
    deadline = time.monotonic() + wait
    landed = 0
    with Progress(TextColumn("landing"), BarColumn(), MofNCompleteColumn(), console=console, transient=True) as bar:
        task = bar.add_task("landing", total=len(events))
        while True:
            landed = reader.landed(batch)
            bar.update(task, completed=landed)
            if landed >= len(events) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    if landed >= len(events):
        console.print(f"{verb} {len(events)} candidate(s): landed")
    else:
        console.print(f"[yellow]{verb} {len(events)} candidate(s): {landed} landed within {wait:.0f}s; the rest are in "
                      "Kafka and land shortly (`flywheel review list` shows them)[/]")


def _decide_command(action: str, verb: str, help_text: str):
    @review.command(action, help=help_text)
    @click.argument("candidate_ids", nargs=-1)
    @_filter_options
    @click.option("--all", "all_", is_flag=True, help="With no ids and no filter: every candidate matching the defaults.")
    @click.option("--reason", default=None, help="Why (kept with the decision).")
    @click.option("--reviewer", default=None, help="Who decides. Default: your user name.")
    @click.option("--dry-run", is_flag=True, help="Only say how many candidates would be decided.")
    @click.pass_context
    def command(ctx, candidate_ids, task_type, state, run_id, label, status, limit, all_, reason, reviewer, dry_run):
        from training.curation.review import make_reviews

        s = settings_of(ctx)
        reader = _Reader(s)
        filtered = any(v is not None for v in (task_type, state, run_id, label, limit)) or status != "kept"
        if candidate_ids:
            ids = reader.resolve(list(candidate_ids))
            if filtered:  # ids and a filter: the ids that match it
                ids = reader.ids(_make_filter(task_type, state, run_id, label, status, limit, ids))
        elif filtered or all_:
            ids = reader.ids(_make_filter(task_type, state or ("pending" if action != "reset" else None), run_id, label,
                                          status, limit))
        else:
            raise click.UsageError("give candidate ids or a filter (--task-type, --label, --state, --run, --limit), "
                                   "or --all")
        if dry_run:
            click.echo(f"would {action} {len(ids)} candidate(s)")
            return
        events = make_reviews(ids, action, reviewer=reviewer or getpass.getuser(), reason=reason, source="cli")
        _send(s, events, reader, verb)

    return command


_decide_command("approve", "approved", "Approve candidates (ids, unique id prefixes, or a filter: by default a filter "
                "picks pending ones, e.g. `flywheel review approve --task-type data-viz/chart-config --label good`).")
_decide_command("reject", "rejected", "Reject candidates (ids or a filter, as for approve).")
_decide_command("reset", "reset", "Return candidates to pending (ids or a filter; a filter matches any state).")


@review.command("edit")
@click.argument("candidate_id")
@click.option("--response", "text", default=None, help="The corrected response.")
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False, allow_dash=True), default=None,
              help="Read the corrected response from a file (- for stdin).")
@click.option("--reason", default=None, help="Why (kept with the decision).")
@click.option("--reviewer", default=None, help="Who decides. Default: your user name.")
@click.pass_context
def review_edit(ctx, candidate_id: str, text: str | None, path: str | None, reason, reviewer) -> None:
    """Replace a candidate's response with a corrected one (state: edited; the dataset
    builder trains on the edit)."""
    from training.curation.review import make_reviews, open_text

    if (text is None) == (path is None):
        raise click.UsageError("give the corrected response with exactly one of --response TEXT or --file F")
    if path is not None:
        with open_text(path) as f:
            text = f.read()
    s = settings_of(ctx)
    reader = _Reader(s)
    ids = reader.resolve([candidate_id])
    events = make_reviews(ids, "edit", reviewer=reviewer or getpass.getuser(), reason=reason, edited_response=text,
                          source="cli")
    _send(s, events, reader, "edited")


@review.command("export")
@_filter_options
@click.option("--output", "-o", default="-", show_default=True, help="JSONL file to write (- for stdout).")
@click.pass_context
def review_export(ctx, task_type, state, run_id, label, status, limit, output) -> None:
    """Write candidates as JSONL for review elsewhere: each line has the conversation, the
    response and the state, and empty `action`/`reason` fields. Fill in action (approve,
    reject, edit with `edited_response`, reset) and load it with `flywheel review import`."""
    from training.curation.review import export_jsonl, open_text

    reader = _Reader(settings_of(ctx))
    rows, _ = reader.list(_make_filter(task_type, state, run_id, label, status, limit), full=True)
    with open_text(output, "w") as f:
        n = export_jsonl(rows, f)
    if output != "-":
        console.print(f"exported {n} candidate(s) to {Path(output).resolve()}")


@review.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--reviewer", default=None, help="Reviewer of lines that name none. Default: your user name.")
@click.option("--dry-run", is_flag=True, help="Check the file and count the decisions; send nothing.")
@click.pass_context
def review_import(ctx, path: str, reviewer, dry_run: bool) -> None:
    """Load a JSONL file of decisions (an export with `action` filled in) as review events.
    All or nothing: an invalid line or an unknown candidate stops the import, naming the
    lines. Lines without an action are skipped and counted."""
    from training.curation.review import open_text, read_import

    s = settings_of(ctx)
    reader = _Reader(s)
    with open_text(path) as f:
        result = read_import(f, reviewer=reviewer or getpass.getuser(), known_ids=reader.all_ids())
    summary = ", ".join(f"{k} {v}" for k, v in sorted(result.summary().items())) or "no decisions"
    console.print(f"{path}: {summary}; {len(result.skipped)} line(s) without an action skipped")
    if not dry_run:
        _send(s, result.events, reader, "imported")


@review.command("auto")
@click.option("--run", "run_id", default=None, help="Only candidates of this curation run.")
@click.option("--dry-run", is_flag=True, help="Only count what the rules would decide.")
@click.pass_context
def review_auto(ctx, run_id: str | None, dry_run: bool) -> None:
    """Apply the auto rules (settings section `review`) to pending candidates now, as
    curation does after each run when review.auto_approve is on."""
    from training.curation.review import auto_decisions

    s = settings_of(ctx)
    reader = _Reader(s)
    if not s.review.auto_approve:
        raise click.ClickException("review.auto_approve is off; turn it on (FLYWHEEL_REVIEW__AUTO_APPROVE=true) to use "
                                   "the rules")
    rows, _ = reader.list(_make_filter(None, "pending", run_id, None, "kept", None))
    collected = auto_decisions(rows, s.review)
    counts: dict[str, int] = {}
    for e in collected:
        counts[e.action] = counts.get(e.action, 0) + 1
    console.print("auto rules: " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "nothing to decide"))
    if not dry_run:
        _send(s, collected, reader, "auto-decided")
