"""One curation run: mine -> clean -> raters -> task types -> dedup -> select -> review.

`curate(conn, settings)` reads what landed since the last run (`training.curation.mine`), applies
the rules (`training.curation.clean`), cleans the users' labels (`training.curation.raters`), types every
candidate (`training.curation.task_types`), removes duplicates (`training.curation.dedup`), selects a
diverse set within per-type budgets (`training.curation.select`), optionally scores golden and
hard examples, and writes the candidates, the funnel and the new watermark in one
transaction: a failed run moves nothing and is recorded as failed. Review state starts
pending; `training.curation.review.auto_approve` then applies the configured rules.

Runs inside the control plane (the DuckDB writer) or, with none running, in the CLI.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import numpy as np

from training.curation.candidate import COLUMNS, JSON_COLUMNS, Candidate
from training.curation.clean import CleanRules, clean, tag_robust
from training.errors import TrainingError
from training.curation.funnel import STAGES, build_funnel
from training.curation.mine import mine, mining_window, prompt_of, save_watermark

log = logging.getLogger(__name__)

__all__ = ["CurationBusy", "CurationResult", "Progress", "curate", "get_run", "list_runs"]

Progress = Callable[[str, int, int], None]  # (stage, done, total)

# One run at a time per process: two runs from one watermark would mine the same events
# and fight over the same candidate rows (the API's runner and the scheduled refresh share
# the control plane).
_ONE_RUN = threading.Lock()


class CurationBusy(TrainingError):
    """Another curation run is in progress in this process."""

    status = 409


@dataclass
class CurationResult:
    run_id: str
    funnel: dict
    candidates: list[Candidate]

    @property
    def kept(self) -> list[Candidate]:
        return [c for c in self.candidates if c.kept]


def _noop(stage: str, done: int, total: int) -> None:
    pass


def curate(conn, settings, *, run_id: str | None = None, full: bool = False, progress: Progress | None = None,
           embedder=None, scorer=None, emit=None) -> CurationResult:
    """Run one curation (see the module docstring); returns the run id, funnel and candidates.

    `full` re-mines everything landed (ignoring the watermark); `embedder` defaults to
    ``training.curation.embed.Embedder.shared()``; `scorer` (a ``training.curation.select.ModelScorer``) is
    built from the settings when the golden or hardness stage is on; `emit` sends the
    auto-review decisions (default: training.curation.review's emitter through Kafka)."""
    from streams.schemas import new_id

    cfg = settings.curation
    progress = progress or _noop
    run_id = run_id or new_id("cur-")
    if not _ONE_RUN.acquire(blocking=False):
        raise CurationBusy("another curation run is in progress; wait for it (flywheel mine --list)")
    try:
        conn.execute("INSERT INTO curation_runs (run_id, started_at, status, settings) VALUES (?, ?, 'running', ?)",
                     [run_id, datetime.now(timezone.utc), cfg.model_dump_json()])
        try:
            return _run(conn, settings, run_id, full, progress, embedder, scorer, emit)
        except BaseException as e:
            conn.execute("UPDATE curation_runs SET status = 'failed', finished_at = now(), error = ? WHERE run_id = ?",
                         [f"{type(e).__name__}: {e}"[:2000], run_id])
            raise
    finally:
        _ONE_RUN.release()


def _run(conn, settings, run_id, full, progress, embedder, scorer, emit) -> CurationResult:
    cfg = settings.curation
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        timings[stage] = round(now - t0, 3)
        t0 = now

    # -- mine
    progress("mine", 0, 1)
    window = mining_window(conn, cfg.watermark_lag_s, full=full)
    mined = mine(conn, window)
    cands = mined.candidates
    _prompt_texts(cands)
    progress("mine", 1, 1)
    lap("mine")

    # -- clean
    progress("clean", 0, len(cands))
    clean(cands, CleanRules.from_settings(cfg))
    progress("clean", len(cands), len(cands))
    lap("clean")

    # -- raters
    progress("raters", 0, len(cands))
    rater_summary = _label(conn, cands, window.end, cfg)
    robust = tag_robust(cands)
    progress("raters", len(cands), len(cands))
    lap("raters")

    # -- embeddings + task types (every candidate is typed, dropped ones too: the funnel
    # and the review queue show types at every stage)
    from flywheel.domains import domains_for
    from training.curation.task_types import TaskClassifier, Taxonomy

    taxonomy = Taxonomy.load(cfg.taxonomy_path or None, domains=domains_for(settings))
    texts = [c.prompt_text or "" for c in cands]
    vectors = np.zeros((0, 0), dtype=np.float32)  # replaced below; an empty run needs no width
    if cands:  # an empty run (nothing landed) loads no model
        if embedder is None:
            from training.curation.embed import Embedder

            embedder = Embedder.shared()
        vectors = _encode(embedder, texts, cfg.embed_batch_size, progress)
        lap("embed")
        # Tool-calling types are found by the tools a request offers, never by its text.
        domains = domains_for(settings)
        by_text = Taxonomy(tuple(t for t in taxonomy.types if not _tool_type(domains, t.name)), taxonomy.source)
        classifier = TaskClassifier(by_text, embedder, threshold=cfg.task_threshold)
        for c, k in zip(cands, classifier.classify(texts, embeddings=vectors)):
            c.task_type, c.task_confidence = k.task_type, round(float(k.confidence), 4)
        for c in cands:
            if c.calls_tools:
                c.task_type, c.task_confidence = tool_task_type(domains, c.tools, c.app), 1.0
        _teacher_task_types(cands, settings)
        for c in cands:
            if cfg.drop_unknown_task_types and c.kept and c.task_type == "unknown":
                c.drop("task_types", f"unknown-task-type: confidence {c.task_confidence:.2f} < {cfg.task_threshold}")
    progress("task_types", len(cands), len(cands))
    lap("task_types")

    # -- dedup (kept candidates only; the best-scored member of each group stays)
    from training.curation.dedup import dedup

    earlier = _drop_seen_before(conn, cands)
    live = [i for i, c in enumerate(cands) if c.kept]
    dedup_report: dict = {"earlier_runs_exact": earlier}
    if live:
        progress("dedup", 0, len(live))
        result = dedup([texts[i] for i in live], vectors[live], np.array([_score(cands[i]) for i in live]),
                       threshold=cfg.dedup_threshold)
        for j, i in enumerate(live):
            c = cands[i]
            # the group is named after its kept member, so it means the same in every run
            c.dedup_group = int(cands[live[int(result.group[j])]].candidate_id[:15], 16)
            reason = result.reason[j]
            if reason is not None:
                c.drop("dedup", _with_candidate_ids(reason, live, cands))
        dedup_report.update({"threshold": float(result.threshold), **_jsonable(result.report)})
        survivors = [i for i in live if cands[i].kept]
        dedup_report.update(_drop_near_earlier(conn, cands, survivors, vectors, float(result.threshold),
                                               cfg.dedup_earlier_limit))
        progress("dedup", len(live), len(live))
    lap("dedup")

    # -- select: the per-user cap, then K-Center-Greedy within per-type budgets
    from training.curation.select import select_by_budget
    from training.curation.user_cap import apply_user_cap

    user_cap = apply_user_cap(cands, cfg.max_user_share, cfg.user_share_floor, _score)
    live = [i for i, c in enumerate(cands) if c.kept]
    select_report: dict = {"user_cap": user_cap}
    if live:
        progress("select", 0, len(live))
        budgets = {**taxonomy.weights(), **cfg.budgets}
        types = [cands[i].task_type or "unknown" for i in live]
        chosen = select_by_budget(vectors[live], types, budgets, min(cfg.select_total, len(live)))
        keep = set(int(k) for k in chosen.keep)
        for j, i in enumerate(live):
            if j not in keep:
                t = types[j]
                quota = chosen.per_type.get(t, {})
                cands[i].drop("select", f"not-selected: {t} quota {quota.get('quota', '?')} of "
                              f"{quota.get('available', '?')} (K-Center-Greedy keeps the most distinct)")
        select_report.update({"total": cfg.select_total, "budgets": budgets, "per_type": _jsonable(chosen.per_type)})
        progress("select", len(live), len(live))
    lap("select")

    # -- optional model-scored stages
    if cfg.golden or cfg.hardness:
        _model_stages(cands, settings, scorer, progress)
        lap("golden_hardness")

    funnel = build_funnel(
        cands, STAGES,
        window={"from": window.start.isoformat() if window.start else None, "to": window.end.isoformat()},
        events=mined.events, sessions=mined.sessions, orphan_feedback=mined.orphan_feedback, robust=robust,
        raters=rater_summary,
        dedup=dedup_report, select=select_report, timings_s=timings,
    )

    # -- write: candidates, watermark, run, in one transaction
    progress("write", 0, len(cands))
    conn.execute("BEGIN TRANSACTION")
    try:
        _write_candidates(conn, cands, run_id)
        _write_vectors(conn, cands, vectors, run_id)
        save_watermark(conn, window, run_id)
        conn.execute(
            "UPDATE curation_runs SET status = 'finished', finished_at = now(), watermark_from = ?, watermark_to = ?, "
            "funnel = ? WHERE run_id = ?",
            [window.start, window.end, json.dumps(funnel), run_id],
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    progress("write", len(cands), len(cands))
    _auto_review(conn, settings, run_id, funnel, emit)
    return CurationResult(run_id, funnel, cands)


# ----------------------------------------------------------------------------- stages


def _tool_type(domains, task_type: str) -> bool:
    task = domains.task(task_type)
    return bool(task is not None and task.tools)


def tool_task_type(domains, tools, app: str | None) -> str:
    """The task type of a request that offered `tools`: the domain task type that declares
    that tool set (`Domains.task_for_tools`), else ``tool-calling/<app>`` (one type per app's
    tool set, with the generic tool-call checks)."""
    import re

    task = domains.task_for_tools(tools)
    if task is not None:
        return task.name
    return "tool-calling/" + (re.sub(r"[^a-z0-9]+", "-", (app or "default").lower()).strip("-") or "default")


def _teacher_task_types(cands: list[Candidate], settings) -> None:
    """Kept candidates the classifier left unknown go to the teacher for a label, when the
    teacher is an endpoint (curation.teacher_task_types); they are tagged `task-type:teacher`."""
    from training.chat_client import teacher_client
    from training.curation.task_types import Taxonomy, teacher_labels

    unknown = [c for c in cands if c.kept and c.task_type == "unknown"]
    client = teacher_client(settings) if unknown and settings.curation.teacher_task_types else None
    if client is None:
        return
    from flywheel.domains import domains_for

    taxonomy = Taxonomy.load(settings.curation.taxonomy_path or None, domains=domains_for(settings))
    for c, label in zip(unknown, teacher_labels(client, taxonomy, [c.prompt_text or "" for c in unknown])):
        if label is not None:
            c.task_type = label
            c.add_tags("task-type:teacher")


def _prompt_texts(cands: list[Candidate]) -> None:
    """What dedup and typing read: the user turns without template boilerplate."""
    from training.curation.embed import focus_texts

    for c, text in zip(cands, focus_texts([prompt_of(c.messages) for c in cands])):
        c.prompt_text = text


def _encode(embedder, texts: list[str], batch_size: int, progress: Progress) -> np.ndarray:
    """The texts' vectors, (len(texts), the embedder's width), encoded in chunks."""
    chunk = max(batch_size * 16, 256)
    parts = []
    for i in range(0, len(texts), chunk):
        parts.append(embedder.encode(texts[i : i + chunk], batch_size=batch_size))
        progress("embed", min(i + chunk, len(texts)), len(texts))
    return np.concatenate(parts) if parts else embedder.encode([])


def _score(c: Candidate) -> float:
    """How good a member of a duplicate group is: the cleaned label first, then the
    strength of the signal (a user's correction, copies, ratings)."""
    label = {"good": 1.0, "unknown": 0.0, "bad": -1.0}.get(c.label or "unknown", 0.0)
    fb = c.feedback
    rating = (fb.mean_rating or 3.0) - 3.0
    return (label * (c.label_confidence or 0.5) + (c.response_source == "edit")
            + 0.05 * min(fb.copies, 4) + 0.1 * rating)


def _drop_seen_before(conn, cands: list[Candidate]) -> int:
    """Drop kept candidates whose prompt (normalised) an earlier run already kept (the
    semantic comparison with earlier runs is `_drop_near_earlier`, after within-run dedup)."""
    from training.curation.dedup import normalise

    ids = {c.candidate_id for c in cands}
    seen: dict[str, tuple[str, str]] = {}
    for cid, run, text in conn.execute(
            "SELECT candidate_id, run_id, prompt_text FROM candidates WHERE status = 'kept'").fetchall():
        if cid not in ids and text:
            seen.setdefault(normalise(text), (cid, run))
    n = 0
    for c in cands:
        if c.kept and c.prompt_text:
            hit = seen.get(normalise(c.prompt_text))
            if hit is not None:
                c.drop("dedup", f"exact-duplicate of {hit[0][:12]} (kept by run {hit[1]})")
                n += 1
    return n


def _drop_near_earlier(conn, cands: list[Candidate], live: list[int], vectors: np.ndarray, threshold: float,
                       limit: int, max_block_cells: int = 32 << 20) -> dict:
    """Semantic dedup across runs: drop a kept candidate whose prompt is within ``threshold``
    cosine of a prompt an earlier run kept (its vector stored in ``candidate_vectors``;
    the ``limit`` most recent ones of the width of ``vectors``, i.e. of this embedder),
    unless the two are the same template with another slot (`dedup.slot_guard`).
    Within-run dedup has already run, so only its survivors are compared."""
    from training.curation.dedup import slot_guard

    if not live or limit <= 0:
        return {"earlier_runs_semantic": 0, "earlier_vectors": 0}
    table = conn.sql(
        "SELECT v.candidate_id, v.run_id, c.prompt_text, v.vector FROM candidate_vectors v "
        "JOIN candidates c USING (candidate_id) WHERE c.status = 'kept' AND NOT list_contains(?, v.candidate_id) "
        "AND len(v.vector) = ? ORDER BY c.created_at DESC LIMIT ?",
        params=[[cands[i].candidate_id for i in live], int(vectors.shape[1]), limit]).to_arrow_table()
    if table.num_rows == 0:
        return {"earlier_runs_semantic": 0, "earlier_vectors": 0}
    earlier = table.column("vector").combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
    earlier = earlier.astype(np.float32, copy=False)
    ids, runs, texts = (table.column(k).to_pylist() for k in ("candidate_id", "run_id", "prompt_text"))
    dropped = 0
    x = vectors[live]
    block = max(1, max_block_cells // table.num_rows)  # similarity blocks of at most 128 MB
    for start in range(0, len(live), block):
        sim = x[start : start + block] @ earlier.T
        rows, cols = np.nonzero(sim >= threshold)
        hits: dict[int, list[int]] = {}
        for r, c in zip(rows.tolist(), cols.tolist()):
            hits.setdefault(r, []).append(c)
        for r, cs in hits.items():
            c_new = cands[live[start + r]]
            for c in sorted(cs, key=lambda c: -sim[r, c]):
                if not slot_guard(c_new.prompt_text or "", texts[c] or ""):
                    c_new.drop("dedup", f"near-duplicate of {ids[c][:12]} (kept by run {runs[c]}, "
                               f"cosine {sim[r, c]:.3f} >= {threshold:.3f})")
                    dropped += 1
                    break
    return {"earlier_runs_semantic": dropped, "earlier_vectors": int(table.num_rows)}


def _write_vectors(conn, cands: list[Candidate], vectors: np.ndarray, run_id: str) -> None:
    """The prompt vectors of the candidates this run kept (for `_drop_near_earlier` later),
    as wide as the embedder makes them."""
    import pyarrow as pa

    kept = [i for i, c in enumerate(cands) if c.kept]
    if not kept:
        return
    x = np.ascontiguousarray(vectors[kept], dtype=np.float32)
    data = pa.table({"candidate_id": [cands[i].candidate_id for i in kept], "run_id": [run_id] * len(kept),
                     "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])})
    conn.register("_vectors", data)
    try:
        conn.execute("INSERT OR REPLACE INTO candidate_vectors SELECT candidate_id, run_id, "
                     "CAST(vector AS FLOAT[]) FROM _vectors")
    finally:
        conn.unregister("_vectors")


def _with_candidate_ids(reason: str, live: list[int], cands: list[Candidate]) -> str:
    """dedup names group members by their index in its input; say the candidate id instead."""
    import re

    def sub(m: re.Match) -> str:
        j = int(m.group(1))
        return f"of {cands[live[j]].candidate_id[:12]}" if 0 <= j < len(live) else m.group(0)

    return re.sub(r"of (\d+)", sub, reason, count=1)


def label_feedback_sql() -> str:
    """The raters' input: every counted feedback row landed up to ``?`` with its request's
    user and number of drafts (bench/scaling.py times this query alone)."""
    from streams.counted_feedback import counted_feedback

    return ("SELECT f.request_id, f.draft, f.kind, f.value, i.user_id, json_array_length(i.drafts) AS n "
            f"FROM {counted_feedback('interactions', 'f.landed_at <= ?')} f "
            "JOIN interactions i ON i.request_id = f.request_id")


def _label(conn, cands: list[Candidate], until, cfg) -> dict:
    """Clean labels from every user's feedback landed so far (more history, better rater
    estimates; only the feedback that counts, streams/counted_feedback.py); verifiable
    truth from chart verification and from users' edits. A candidate answered by the
    user's own edit is good. Every candidate gets its user's rater trust."""
    from flywheel.domains.chart import is_correct, parse_config
    from training.curation.dedup import normalise
    from training.curation.raters import chart_truth, clean_labels, judgements_from_feedback, rater_reliability

    rows = conn.execute(label_feedback_sql(), [until]).fetchall()
    feedback = [{"request_id": r[0], "draft": r[1], "kind": r[2], "value": r[3], "user_id": r[4]} for r in rows]
    drafts = {r[0]: r[5] for r in rows}
    judgements = judgements_from_feedback(feedback, drafts)
    live = [c for c in cands if c.kept]
    truth = chart_truth({_item(c): (c.messages, c.response) for c in live if c.response_source != "edit"})
    for c in live:
        if c.calls_tools:
            if c.response_source == "edit" and c.rejected_response is not None:
                truth[_item(c)] = 1 if _same_calls(c.rejected_response, c.response) else -1
            elif c.response is not None and not _calls_verdict(c, c.response).passed:
                truth[_item(c)] = -1  # a call of a function not offered, or invalid arguments: provably bad
            continue
        if c.response_source == "edit" and c.rejected_response is not None:
            edit = parse_config(c.response)
            if edit is not None:
                truth[_item(c)] = 1 if is_correct(parse_config(c.rejected_response), edit) else -1
    # Equivalent items pool their votes: the same answer to the same prompt (users asking
    # the same thing and getting the same draft), else each item stands alone.
    groups = {_item(c): "same:" + "|".join((normalise(c.prompt_text or ""), normalise(c.response or "")))
              for c in live if c.response_source != "edit" and c.response}
    report = rater_reliability(judgements, truth, min_items=cfg.rater_min_items, groups=groups)
    labels = clean_labels(judgements, report, truth=truth, groups=groups)
    counts: dict[str, int] = {}
    for c in cands:
        c.user_trust = report.trust(c.user_id)
        if c.response_source == "edit":
            c.label, c.label_confidence = "good", 1.0
        else:
            cl = labels.get(_item(c))
            c.label, c.label_confidence = (cl.label, float(cl.confidence)) if cl else ("unknown", 0.5)
        if not c.kept:
            continue
        counts[c.label] = counts.get(c.label, 0) + 1
        if c.label == "bad" and cfg.drop_bad_labels:
            c.drop("raters", f"label-bad: cleaned label bad (confidence {c.label_confidence:.2f})")
        elif c.label == "unknown" and cfg.drop_unknown_labels:
            c.drop("raters", "label-unknown: no reliable vote on this answer")
    statuses: dict[str, int] = {}
    for stats in report.raters.values():
        statuses[stats.status] = statuses.get(stats.status, 0) + 1
    return {"judgements": len(judgements), "truth_items": len(truth), "labels": counts, "raters": statuses,
            "flagged": {r: s.status for r, s in report.raters.items() if s.status in ("random", "reverse")}}


def _calls_verdict(c: Candidate, answer: str):
    """The tool-call verifier on an answer to candidate `c` (its tools and tool_choice)."""
    from flywheel.domains.tool_calls import parse_answer
    from training.labeling.verify import verify_tool_calls

    return verify_tool_calls(c.tools or [], parse_answer(answer)[1], c.tool_choice)


def _same_calls(a: str | None, b: str | None) -> bool:
    """Whether two answers (Hermes text form) make the same calls, arguments compared as JSON."""
    from flywheel.domains.tool_calls import call_key, parse_answer

    return sorted(map(call_key, parse_answer(a)[1])) == sorted(map(call_key, parse_answer(b)[1]))


def _item(c: Candidate) -> str:
    """The raters' name for the answer a candidate carries (`raters.judgements_from_feedback`)."""
    return f"{c.request_id}:{c.response_draft}"


def _model_stages(cands: list[Candidate], settings, scorer, progress: Progress) -> None:
    """Golden scores (Nuggets) and hardness of the kept candidates under the served model."""
    from training.curation.select import ModelScorer, golden_scores, hardness

    cfg = settings.curation
    scorer = scorer or ModelScorer(settings)
    kept = [c for c in cands if c.kept]
    pairs = [(c.messages, c.response) for c in kept]
    if cfg.hardness and kept:
        progress("hardness", 0, len(kept))
        losses = np.asarray(hardness(pairs, scorer), dtype=float)
        for c, loss in zip(kept, losses):
            c.hardness = round(float(loss), 4)
        if len(kept):
            cut = np.quantile(losses, 1 - cfg.hard_share) if cfg.hard_share > 0 else np.inf
            for c, loss in zip(kept, losses):
                if loss >= cut and c.label == "good":
                    c.add_tags("hard")
        progress("hardness", len(kept), len(kept))
    if cfg.golden and kept:
        progress("golden", 0, len(kept))
        by_type: dict[str, list[Candidate]] = {}
        for c in kept:
            by_type.setdefault(c.task_type or "unknown", []).append(c)
        for items in by_type.values():
            # Anchors: the most trusted answers of the type (edits first, then confident labels).
            ranked = sorted(items, key=lambda c: (c.response_source == "edit", c.label_confidence or 0), reverse=True)
            anchors = [(c.messages, c.response) for c in ranked[: cfg.golden_anchors]]
            scores = golden_scores([(c.messages, c.response) for c in items], anchors, scorer)
            for c, s in zip(items, scores):
                c.golden_score = round(float(s), 4)
        progress("golden", len(kept), len(kept))


def _auto_review(conn, settings, run_id: str, funnel: dict, emit) -> None:
    """Apply the review section's auto rules (training.curation.review) to this run's pending
    candidates; their decisions travel as review events through Kafka. The counts (or the
    error: the run itself is already written) go into the run's funnel."""
    from training.curation.review import auto_approve

    try:
        events = auto_approve(conn, settings, run_id=run_id, emit=emit)
        decided: dict[str, int] = {}
        for e in events:
            decided[e.action] = decided.get(e.action, 0) + 1
        funnel["review"] = {"auto": bool(settings.review.auto_approve), **decided}
        if events:  # the batch of the decisions' event ids (rv-<batch>-n): a caller waits for them to land
            funnel["review"]["batch"] = events[0].event_id.split("-")[1]
    except Exception as e:  # noqa: BLE001 - candidates stay pending; the operator sees why
        log.exception("auto review of curation run %s failed", run_id)
        funnel["review"] = {"auto": True, "error": f"{type(e).__name__}: {e}"}
    conn.execute("UPDATE curation_runs SET funnel = ? WHERE run_id = ?", [json.dumps(funnel), run_id])


# ----------------------------------------------------------------------------- storage


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _write_candidates(conn, cands: list[Candidate], run_id: str) -> None:
    import pyarrow as pa

    if not cands:
        return
    data: dict[str, list] = {col: [] for col in COLUMNS}
    for c in cands:
        c.run_id = run_id
        for col, value in c.to_row().items():
            data[col].append(value)
    cols = ", ".join(COLUMNS)
    select = ", ".join(f"CAST({c} AS JSON)" if c in JSON_COLUMNS else c for c in COLUMNS)
    conn.register("_curated", pa.table(data))
    try:
        conn.execute(f"INSERT OR REPLACE INTO candidates ({cols}, updated_at) SELECT {select}, now() FROM _curated")
    finally:
        conn.unregister("_curated")


def list_runs(conn, limit: int = 20) -> list[dict]:
    cur = conn.execute(
        "SELECT run_id, started_at, finished_at, status, watermark_from, watermark_to, "
        "json_extract(funnel, '$.stages') AS stages, error FROM curation_runs ORDER BY started_at DESC LIMIT ?", [limit])
    cols = [d[0] for d in cur.description]
    out = []
    for row in cur.fetchall():
        r = dict(zip(cols, row))
        stages = json.loads(r.pop("stages")) if r.get("stages") else []
        r["mined"] = stages[0]["out"] if stages else None
        r["kept"] = stages[-1]["out"] if stages else None
        out.append(_jsonable(r))
    return out


def get_run(conn, run_id: str) -> dict | None:
    cur = conn.execute("SELECT run_id, started_at, finished_at, status, watermark_from, watermark_to, funnel, settings, "
                       "error FROM curation_runs WHERE run_id = ?", [run_id])
    row = cur.fetchone()
    if row is None:
        return None
    r = dict(zip([d[0] for d in cur.description], row))
    for k in ("funnel", "settings"):
        r[k] = json.loads(r[k]) if r[k] else None
    return _jsonable(r)
