"""Datasets: curated candidates -> an immutable, versioned SFT/DPO snapshot with lineage.

Reads the `candidates` a curation run kept and their review state (`review_latest`), and
writes a snapshot folder in the format `training/datasets/snapshot.py` defines (TRL `messages` for
SFT, `prompt`/`chosen`/`rejected` for DPO, a held-out `eval` split), plus the `datasets`
and `dataset_items` rows that trace every record back to its candidate, curation run and
source events.

Targets, best first (a rejected review excludes the candidate):
1. an operator's edit (review action `edit`);
2. the user's own correction (`edit` feedback: the configuration they saved);
3. the answer itself when its cleaned label is `good` (or `unknown` and a verifier passes);
4. the teacher's answer when a teacher is given and it passes the task's verifier (for
   candidates with a bad answer; the bad answer becomes the DPO `rejected`).
Targets of task types with a verifier must pass it (a user's edit included: it is the
config they saved, but a broken one would teach the wrong thing).

Tool calls (issue 12): a candidate whose request offered tools keeps them; its answers
are in the Hermes text form (`flywheel.domains.tool_calls`) up to here, and its targets
must pass the tool-call verifier (`verify_tool_calls`: offered functions, arguments valid
under their schemas, the tool_choice honoured). Records are in TRL's tool format:
``tools`` on the record, the answer an assistant message with ``tool_calls`` (arguments
as objects); a user's corrected call against the draft's wrong one is a DPO pair.

Preference pairs: the target vs what the user moved away from (the draft not chosen, the
edited draft, the regenerated answer) or vs a bad answer to a near-identical prompt
(same dedup group), or the teacher's answer vs the served model's failing one.

The evaluation split is chosen by a hash of the dedup group (so near-duplicates fall on
the same side and an item stays on its side as data grows): `eval_share` of each task
type, at least `eval_min_per_type` when the type has enough items. It never enters
training. A general replay set shipped with the project (`training/data/general.jsonl`)
is mixed in at `replay_ratio` against forgetting; candidates tagged `hard` get
`hard_weight`.

The version is a hash of the content (`ds-<12 hex>`): the same input gives the same
version, any change gives a new one, and a version's folder is never rewritten.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from training.curation.candidate import Candidate
from training.errors import DatasetError
from training.datasets.snapshot import FILES, MANIFEST, load_snapshot, snapshot_dir, write_snapshot

DATA = Path(__file__).resolve().parent.parent / "data"
REPLAY_TASK = "general/replay"
EXPORT_FORMATS = ("trl", "alpaca", "sharegpt", "ms-swift")

Progress = Callable[[str], None]


@dataclass
class BuildResult:
    version: str
    path: Path
    counts: dict
    task_types: dict
    excluded: dict
    created: bool  # False: the same content existed already (the version is reused)

    def to_dict(self) -> dict:
        return {"version": self.version, "path": str(self.path), "counts": self.counts,
                "task_types": self.task_types, "excluded": self.excluded, "created": self.created}


@dataclass
class _Item:
    """One candidate with its latest review, on its way into the dataset."""

    candidate: Candidate
    review_action: str = "pending"  # the latest review decision's action
    edited_response: str | None = None  # the operator's answer, with review action `edit`
    target: str | None = None
    target_source: str | None = None
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (answer, why)

    @property
    def cid(self) -> str:
        return self.candidate.candidate_id

    @property
    def task_type(self) -> str:
        return self.candidate.task_type or "unknown"


# -- reading ---------------------------------------------------------------------------
_CANDIDATES_SQL = """
SELECT c.*, coalesce(r.action, 'pending') AS review_action, r.edited_response
FROM candidates c LEFT JOIN review_latest r USING (candidate_id)
WHERE {where}
ORDER BY c.candidate_id
"""


def _load(conn, where: str = "true") -> list[_Item]:
    cur = conn.execute(_CANDIDATES_SQL.format(where=where))
    cols = [d[0] for d in cur.description]
    items = []
    for values in cur.fetchall():
        row = dict(zip(cols, values))
        items.append(_Item(Candidate.from_row(row), row["review_action"], row["edited_response"]))
    return items


def _review_state(action: str) -> str:
    return {"approve": "approved", "reject": "rejected", "edit": "edited", "reset": "pending"}.get(action, "pending")


# -- targets and pairs ------------------------------------------------------------------
def _passes(task_type: str, messages: list[dict], answer: str, tools: list[dict] | None = None,
            tool_choice=None) -> bool | None:
    """The task's verifier on an answer (the tool-call verifier when the request offered
    tools); None when the task type has none."""
    from training.labeling.verify import has_verifier, verify, verify_answer_calls

    if tools:
        return verify_answer_calls(tools, answer, tool_choice).passed
    if not has_verifier(task_type):
        return None
    return verify(task_type, messages, answer).passed


def _choose_target(item: _Item, teacher, excluded: Counter, unrated_drafts: bool = False) -> None:
    c = item.candidate
    messages, response, label = c.messages, c.response, c.label
    candidates: list[tuple[str, str]] = []
    if item.review_action == "edit" and item.edited_response:
        candidates.append((item.edited_response, "operator-edit"))
    if c.response_source == "edit" and response:
        candidates.append((response, "user-edit"))
    unrated = response and label in (None, "unknown")
    # An unrated answer is a target only when a person approved it or unrated_drafts says so.
    vouched = unrated_drafts or item.review_action == "approve"
    if response and label == "good":
        candidates.append((response, c.response_source or "draft"))
    elif unrated and vouched and _passes(item.task_type, messages, response, c.tools, c.tool_choice):
        candidates.append((response, "verified-draft"))
    elif unrated and not vouched and not candidates:
        excluded["unrated answer (datasets.unrated_drafts is off)"] += 1
        return
    for answer, source in candidates:
        if _passes(item.task_type, messages, answer, c.tools, c.tool_choice) is False:
            excluded[f"target failed the {item.task_type} verifier ({source})"] += 1
            continue
        item.target, item.target_source = answer, source
        break
    if item.target is None and teacher is not None and label == "bad":
        answer = (teacher.label(item.task_type, messages, tools=c.tools, tool_choice=c.tool_choice) if c.tools
                  else teacher.label(item.task_type, messages))
        if answer is not None and answer.answer and answer.passed:  # the teacher's best sample passed the verifiers
            item.target, item.target_source = answer.answer, "teacher"
        else:
            excluded["teacher answer failed the verifiers"] += 1
    if item.target is None:
        excluded["no trustworthy target (bad or unknown answer, no correction)"] += 1
        return
    # What the user moved away from, and the served answer when something better replaced it.
    for answer, why in ((c.rejected_response, "moved-away"), (response, "replaced")):
        if answer and answer.strip() and answer != item.target and (why != "replaced" or item.target_source in (
                "operator-edit", "user-edit", "teacher")):
            item.rejected.append((answer, why))


def _group_pairs(items: list[_Item], bad: list[Candidate]) -> None:
    """A bad answer to a near-identical prompt (same dedup group) as another rejected."""
    bad_by_group: dict = defaultdict(list)
    for c in bad:
        if c.dedup_group is not None and c.response:
            bad_by_group[c.dedup_group].append(c)
    for item in items:
        if item.target is None or item.candidate.dedup_group is None:
            continue
        have = {a for a, _ in item.rejected}
        for c in bad_by_group.get(item.candidate.dedup_group, []):
            if c.candidate_id != item.cid and c.response not in have and c.response != item.target:
                item.rejected.append((c.response, f"bad answer in dedup group ({c.candidate_id[:10]})"))
                have.add(c.response)
                break


# -- splits --------------------------------------------------------------------------------
def _split_key(item: _Item) -> float:
    group = item.candidate.dedup_group
    key = f"group:{group}" if group is not None else f"cand:{item.cid}"
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16 ** 12


def _eval_ids(items: list[_Item], share: float, min_per_type: int) -> set[str]:
    by_type: dict[str, list[_Item]] = defaultdict(list)
    for item in items:
        by_type[item.task_type].append(item)
    chosen: set[str] = set()
    for _, group in sorted(by_type.items()):
        ranked = sorted(group, key=_split_key)
        picked = [i for i in ranked if _split_key(i) < share]
        if len(picked) < min_per_type and len(group) >= 3 * min_per_type:
            picked = ranked[:min_per_type]
        chosen.update(i.cid for i in picked)
    return chosen


# -- records ---------------------------------------------------------------------------------
def _lineage(item: _Item) -> dict:
    return {"candidate_id": item.cid, "curation_run": item.candidate.run_id,
            "source_ids": list(item.candidate.source_event_ids), "target_source": item.target_source}


def _assistant(answer: str, tools: list[dict] | None) -> dict:
    """The answer as an assistant message: with tools, its calls as TRL's ``tool_calls``."""
    if not tools:
        return {"role": "assistant", "content": answer}
    from flywheel.domains.tool_calls import arguments_of, parse_answer

    content, calls = parse_answer(answer, [t["function"]["name"] for t in tools])
    if not calls:
        return {"role": "assistant", "content": answer}
    return {"role": "assistant", "content": content, "tool_calls": [
        {"type": "function", "function": {"name": c["function"]["name"], "arguments": arguments_of(c)}}
        for c in calls]}


def _records(items: list[_Item], eval_ids: set[str], cfg) -> tuple[list[dict], list[dict], list[dict]]:
    sft, dpo, evals = [], [], []
    for item in items:
        if item.target is None:
            continue
        c = item.candidate
        tools = {"tools": c.tools} if c.tools else {}
        messages = list(c.messages)
        conversation = messages + [_assistant(item.target, c.tools)]
        if item.cid in eval_ids:
            choice = {"tool_choice": c.tool_choice} if c.tools and c.tool_choice is not None else {}
            evals.append({"messages": conversation, "task_type": item.task_type, **tools, **choice, **_lineage(item)})
            continue
        hard = "hard" in c.tags
        sft.append({"messages": conversation, "task_type": item.task_type,
                    "weight": cfg.hard_weight if hard else 1.0, **tools, **_lineage(item)})
        for answer, why in item.rejected:
            dpo.append({"prompt": messages, "chosen": [_assistant(item.target, c.tools)],
                        "rejected": [_assistant(answer, c.tools)], "task_type": item.task_type,
                        "pair_source": why, **tools, **_lineage(item)})
    return sft, dpo, evals


def _replay(n_sft: int, ratio: float, seed: str) -> list[dict]:
    if ratio <= 0 or n_sft == 0:
        return []
    pool = read_general("general.jsonl")
    n = min(len(pool), math.ceil(ratio * n_sft))
    rng = random.Random(seed)
    return [{**rec, "weight": 1.0, "source_ids": [], "target_source": "replay"} for rec in rng.sample(pool, n)]


def read_general(name: str = "general.jsonl") -> list[dict]:
    """The general set shipped with the project (replay against forgetting; `general_eval.jsonl`
    is its held-out part for the evaluation's forgetting check)."""
    with (DATA / name).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def content_version(sft: list[dict], dpo: list[dict], evals: list[dict]) -> str:
    digest = hashlib.sha256()
    for name, recs in (("sft", sft), ("dpo", dpo), ("eval", evals)):
        digest.update(name.encode())
        for rec in recs:
            digest.update(json.dumps(rec, sort_keys=True, ensure_ascii=False).encode())
    return f"ds-{digest.hexdigest()[:12]}"


# -- the build ----------------------------------------------------------------------------------
def build_dataset(conn, settings, *, teacher=None, progress: Progress | None = None) -> BuildResult:
    """Build (or find) the dataset version of what is curated and reviewed now."""
    cfg = settings.datasets
    say = progress or (lambda _msg: None)
    if teacher is None and cfg.relabel:
        from training.labeling.teacher import make_teacher

        teacher = make_teacher(settings, conn=conn)
    states = ("approved", "edited") + (("pending",) if cfg.include_pending else ())
    loaded = _load(conn)
    kept = [i for i in loaded if i.candidate.kept]
    excluded: Counter = Counter()
    items: list[_Item] = []
    for item in kept:
        state = _review_state(item.review_action)
        if state not in states:
            excluded[f"review state {state}"] += 1
            continue
        items.append(item)
    say(f"{len(kept)} kept candidates, {len(items)} eligible after review")
    for n, item in enumerate(items, 1):
        _choose_target(item, teacher, excluded, cfg.unrated_drafts)
        if n % 500 == 0:
            say(f"targets: {n}/{len(items)}")
    bad = [i.candidate for i in loaded if i.candidate.label == "bad" and i.review_action != "approve"]
    _group_pairs(items, bad)
    with_target = [i for i in items if i.target is not None]
    eval_ids = _eval_ids(with_target, cfg.eval_share, cfg.eval_min_per_type)
    sft, dpo, evals = _records(with_target, eval_ids, cfg)
    if not sft:
        raise DatasetError(f"nothing to train on: {len(kept)} kept candidates, {len(items)} reviewed, none with a "
                           f"trustworthy target ({dict(excluded) or 'no candidates'}); run `flywheel mine` and "
                           "review (`flywheel review`), or set datasets.include_pending")
    sft_all = sft + _replay(len(sft), cfg.replay_ratio, content_version(sft, dpo, evals))
    version = content_version(sft_all, dpo, evals)
    folder = snapshot_dir(settings.data_path, version)
    created = not (folder / MANIFEST).is_file()
    if created:
        tmp = folder.with_name(folder.name + ".tmp")
        write_snapshot(tmp, version=version, sft=sft_all, dpo=dpo, eval=evals,
                       curation_runs=sorted({i.candidate.run_id for i in with_target}),
                       excluded=dict(excluded), settings=cfg.model_dump())
        tmp.rename(folder)  # readers never see a half-written version
        say(f"wrote {folder}")
    snap = load_snapshot(folder)
    _record(conn, snap, excluded)
    return BuildResult(version, folder, snap.manifest["counts"], snap.manifest["task_types"], dict(excluded), created)


def _record(conn, snap, excluded: Counter) -> None:
    if conn.execute("SELECT count(*) FROM datasets WHERE version = ?", [snap.version]).fetchone()[0]:
        return
    m = snap.manifest
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute("INSERT INTO datasets (version, created_at, path, counts, task_types, curation_runs, excluded, "
                     "settings) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     [snap.version, m["created_at"], str(snap.path), json.dumps(m["counts"]),
                      json.dumps(m["task_types"]), json.dumps(m.get("curation_runs", [])), json.dumps(dict(excluded)),
                      json.dumps(m.get("settings", {}))])
        rows = []
        for split in ("sft", "dpo", "eval"):
            for n, rec in enumerate(getattr(snap, split)):
                rows.append((snap.version, split, n, rec.get("candidate_id"), rec["task_type"],
                             rec.get("target_source"), json.dumps(rec.get("source_ids") or [])))
        if rows:
            conn.executemany("INSERT INTO dataset_items (version, split, line, candidate_id, task_type, target_source, "
                             "source_event_ids) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise


def list_datasets(conn) -> list[dict]:
    cur = conn.execute("SELECT version, created_at, counts, task_types, curation_runs, path FROM datasets "
                       "ORDER BY created_at DESC")
    return [{"version": v, "created_at": c.isoformat() if isinstance(c, datetime) else c, "counts": json.loads(n),
             "task_types": json.loads(t), "curation_runs": json.loads(r), "path": p} for v, c, n, t, r, p in
            cur.fetchall()]


def get_dataset(conn, version: str) -> dict:
    for d in list_datasets(conn):
        if d["version"] == version:
            return d
    raise DatasetError(f"no dataset {version!r}; `flywheel datasets list` shows the versions")


# -- exports --------------------------------------------------------------------------------------
# Tool calls (issue 12) in each format, as its consumers read them:
# - sharegpt (LLaMA-Factory, data/README.md and its SharegptDatasetConverter): ``tools`` a JSON
#   string of the functions (name, description, parameters: the form of its glaive_toolcall
#   examples; newer versions also unwrap OpenAI's {"type": "function", ...}), an assistant's
#   calls a ``function_call`` turn whose value is the JSON {"name", "arguments"} (a list for
#   parallel calls), tool results one ``observation`` turn (several results: a JSON list of
#   them), keeping its human/observation - gpt/function_call alternation. A function_call turn
#   holds no text: an assistant turn with text beside its calls has no sharegpt form.
# - ms-swift (docs Customization/Custom-dataset.md, "Agent format"): the standard ``messages``
#   format, ``tools`` a JSON string of OpenAI's tools, each call a ``tool_call`` message whose
#   content is the JSON {"name", "arguments"}, each result a ``tool_response`` message.
# - alpaca has no form for calls or results: records with tools are left out, and counted.
class NoExportForm(DatasetError):
    """A record the export format cannot hold (the message says why)."""


def _text(content) -> str:
    """A message's content as text (OpenAI's content parts joined)."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def _has_tools(rec: dict) -> bool:
    return bool(rec.get("tools")) or any(m.get("tool_calls") or m["role"] == "tool" for m in rec["messages"])


def _calls(calls: list[dict]) -> list[dict]:
    """Each call as both LLaMA-Factory and ms-swift read one: {"name", "arguments"} (an object)."""
    from flywheel.domains.tool_calls import arguments_of

    return [{"name": c["function"]["name"], "arguments": arguments_of(c)} for c in calls]


def _runs_of_results(messages: list[dict]) -> list:
    """The messages, each run of consecutive tool results (a parallel call's) as one list."""
    out: list = []
    for m in messages:
        if m["role"] != "tool":
            out.append(m)
        elif out and isinstance(out[-1], list):
            out[-1].append(m)
        else:
            out.append([m])
    return out


def _system_and_turns(messages: list[dict]) -> tuple[str | None, list[tuple[str, str]], str]:
    """(system prompt, earlier (user, assistant) turns, last user message) of a conversation
    that ends with the assistant's answer."""
    system = "\n".join(m["content"] for m in messages if m["role"] == "system") or None
    turns = [m for m in messages if m["role"] in ("user", "assistant")]
    pairs = [(turns[i]["content"], turns[i + 1]["content"]) for i in range(0, len(turns) - 1, 2)]
    *history, (query, _answer) = pairs
    return system, history, query


def _sharegpt(rec: dict) -> dict:
    from flywheel.domains.tool_calls import compact_json

    names = {"system": "system", "user": "human", "assistant": "gpt"}
    conversation: list[dict] = []
    for m in _runs_of_results(rec["messages"]):
        if isinstance(m, list):
            results = [_text(r.get("content")) for r in m]
            value = results[0] if len(results) == 1 else json.dumps(results, ensure_ascii=False)
            conversation.append({"from": "observation", "value": value})
        elif m["role"] == "assistant" and m.get("tool_calls"):
            if _text(m.get("content")).strip():
                raise NoExportForm("an assistant turn with text beside its tool calls has no sharegpt form "
                                   "(LLaMA-Factory's function_call turn holds the calls only)")
            calls = _calls(m["tool_calls"])
            conversation.append({"from": "function_call", "value": compact_json(calls[0] if len(calls) == 1 else calls)})
        else:
            conversation.append({"from": names[m["role"]], "value": _text(m.get("content"))})
    out: dict = {"conversations": conversation}
    if rec.get("tools"):
        out["tools"] = json.dumps([t.get("function", t) for t in rec["tools"]], ensure_ascii=False)
    return out


def _ms_swift_messages(rec: dict) -> dict:
    from flywheel.domains.tool_calls import compact_json

    messages: list[dict] = []
    for m in rec["messages"]:
        content = _text(m.get("content"))
        if m["role"] == "tool":
            messages.append({"role": "tool_response", "content": content})
        elif m["role"] == "assistant" and m.get("tool_calls"):
            if content.strip():  # ms-swift joins consecutive assistant parts into one answer
                messages.append({"role": "assistant", "content": content})
            messages += [{"role": "tool_call", "content": compact_json(call)} for call in _calls(m["tool_calls"])]
        else:
            messages.append({"role": m["role"], "content": content})
    out: dict = {"messages": messages}
    if rec.get("tools"):
        out["tools"] = json.dumps(rec["tools"], ensure_ascii=False)
    return out


def to_format(rec: dict, fmt: str) -> dict:
    """One SFT/eval record in an export format (trl: as stored). Raises `NoExportForm` for a
    record the format cannot hold (alpaca: any record with tools)."""
    if fmt == "trl":
        return rec
    if fmt == "sharegpt":
        return _sharegpt(rec)
    if fmt == "ms-swift":
        return _ms_swift_messages(rec)
    if fmt == "alpaca":
        if _has_tools(rec):
            raise NoExportForm("alpaca has no form for tools, tool calls or tool results "
                               "(export as sharegpt, ms-swift or trl to keep them)")
        system, history, query = _system_and_turns(rec["messages"])
        out = {"instruction": query, "input": "", "output": rec["messages"][-1]["content"],
               "history": [list(p) for p in history]}
        return {**out, "system": system} if system else out
    raise DatasetError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")


@dataclass
class ExportResult:
    files: dict[str, Path]  # split -> file written (a split with nothing to write has none)
    skipped: dict[str, dict[str, int]]  # split -> why -> records left out (the format has no form for them)

    def to_dict(self) -> dict:
        return {"files": {k: str(v) for k, v in self.files.items()}, "skipped": self.skipped}


def export_dataset(folder: Path | str, fmt: str, out_dir: Path | str) -> ExportResult:
    """Write the snapshot's splits in ``fmt`` under ``out_dir``; DPO pairs only in trl.
    Records the format cannot hold are left out and counted in ``skipped`` (never silently);
    when that leaves nothing at all, DatasetError."""
    if fmt not in EXPORT_FORMATS:
        raise DatasetError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    snap = load_snapshot(folder)
    out_dir = Path(out_dir)
    converted: dict[str, list[dict]] = {}
    skipped: dict[str, dict[str, int]] = {}
    for split in ("sft", "dpo", "eval"):
        recs = getattr(snap, split)
        if split == "dpo" and fmt != "trl" or not recs:
            continue
        why: Counter = Counter()
        converted[split] = []
        for rec in recs:
            try:
                converted[split].append(to_format(rec, fmt))
            except NoExportForm as e:
                why[str(e)] += 1
        if why:
            skipped[split] = dict(why)
    if converted and not any(converted.values()):
        raise DatasetError(f"{snap.version}: no record has a {fmt} form: {skipped}")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, recs in converted.items():
        if not recs:
            continue
        path = out_dir / f"{snap.version}-{split}.{fmt}.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for rec in recs:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        files[split] = path
    return ExportResult(files, skipped)


__all__ = ["BuildResult", "EXPORT_FORMATS", "ExportResult", "FILES", "NoExportForm", "build_dataset", "content_version",
           "export_dataset", "get_dataset", "list_datasets", "read_general", "to_format"]
