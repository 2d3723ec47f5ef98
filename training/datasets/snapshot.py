"""Dataset snapshot folders: what a training job reads.

A snapshot is an immutable folder ``<data_dir>/datasets/<version>/`` written by the dataset
builder (and by :func:`write_snapshot` in tests and benchmarks):

- ``manifest.json``: ``{"version", "created_at", "counts", "task_types", ...}``;
- ``sft.jsonl``: TRL conversational records ``{"messages": [...], "task_type": str,
  "weight": float, "source_ids": [...]}``;
- ``dpo.jsonl``: TRL preference records ``{"prompt": [messages], "chosen": [{"role":
  "assistant", ...}], "rejected": [{"role": "assistant", ...}], "task_type": str}``;
- ``eval.jsonl``: the held-out split ``{"messages": [...], "task_type": str}`` (the last
  message is the reference answer); it never enters training.

A tool-calling record (issue 12) is in TRL's tool format: it has ``tools`` (OpenAI's
function tools), its assistant messages carry ``tool_calls`` (``{"type": "function",
"function": {"name", "arguments": {...}}}``, ``content`` "" when they only call) and tool
results are ``tool`` messages; eval records add ``tool_choice``. DPO pairs of corrected
calls have ``tools`` too.

The loader is strict: a record that does not fit the contract stops the job with the file
and line, rather than being skipped (nothing is dropped silently).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from training.errors import SnapshotError

MANIFEST = "manifest.json"
FILES = {"sft": "sft.jsonl", "dpo": "dpo.jsonl", "eval": "eval.jsonl"}
ROLES = ("system", "user", "assistant", "tool")  # tool: a tool's result, after an assistant's tool_calls


@dataclass(frozen=True)
class Snapshot:
    path: Path
    manifest: dict
    sft: list[dict] = field(repr=False)
    dpo: list[dict] = field(repr=False)
    eval: list[dict] = field(repr=False)

    @property
    def version(self) -> str:
        return str(self.manifest.get("version") or self.path.name)

    def task_types(self, split: str = "sft") -> list[str]:
        return sorted({r["task_type"] for r in getattr(self, split)})


def snapshot_dir(data_path: Path | str, version: str) -> Path:
    """Where the snapshot ``version`` lives under a data folder."""
    return Path(data_path) / "datasets" / version


def _check_messages(messages, where: str, *, what: str = "messages", needs_assistant: bool = True) -> None:
    if not isinstance(messages, list) or not messages:
        raise SnapshotError(f"{where}: {what!r} must be a non-empty list of {{'role', 'content'}} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise SnapshotError(f"{where}: {what}[{i}] must be {{'role': one of {', '.join(ROLES)}, "
                                f"'content': str}}, got {m!r:.120}")
    if needs_assistant and messages[-1]["role"] != "assistant":
        raise SnapshotError(f"{where}: the last of {what!r} must be the assistant's answer (role 'assistant')")


def _check_task_type(rec: dict, where: str) -> None:
    if not isinstance(rec.get("task_type"), str) or not rec["task_type"]:
        raise SnapshotError(f"{where}: 'task_type' must be a non-empty string")


def validate_record(split: str, rec, where: str) -> dict:
    """Check one record of ``split`` ('sft', 'dpo' or 'eval'); return it with defaults filled."""
    if not isinstance(rec, dict):
        raise SnapshotError(f"{where}: a record must be a JSON object")
    _check_task_type(rec, where)
    if split == "sft":
        _check_messages(rec.get("messages"), where)
        weight = rec.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight <= 0:
            raise SnapshotError(f"{where}: 'weight' must be a number > 0, got {weight!r}")
        return {**rec, "weight": float(weight), "source_ids": list(rec.get("source_ids") or [])}
    if split == "dpo":
        _check_messages(rec.get("prompt"), where, what="prompt", needs_assistant=False)
        if rec["prompt"][-1]["role"] != "user":
            raise SnapshotError(f"{where}: the last message of 'prompt' must be the user's")
        for key in ("chosen", "rejected"):
            _check_messages(rec.get(key), where, what=key)
            if any(m["role"] != "assistant" for m in rec[key]):
                raise SnapshotError(f"{where}: {key!r} must hold only assistant messages")
        if rec["chosen"] == rec["rejected"]:
            raise SnapshotError(f"{where}: 'chosen' and 'rejected' are the same answer")
        return rec
    if split == "eval":
        _check_messages(rec.get("messages"), where)
        return rec
    raise ValueError(f"unknown split {split!r}")


def read_jsonl(path: Path, split: str) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise SnapshotError(f"{where}: not valid JSON ({e})") from None
            out.append(validate_record(split, rec, where))
    return out


def load_snapshot(folder: Path | str) -> Snapshot:
    """Read and validate a snapshot folder. ``sft.jsonl`` must hold at least one record;
    ``dpo.jsonl`` and ``eval.jsonl`` may be empty or missing."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise SnapshotError(f"dataset snapshot {folder} does not exist; build one first (datasets under DATA_DIR/datasets)")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise SnapshotError(f"{folder} has no {MANIFEST}: not a dataset snapshot") from None
    except ValueError as e:
        raise SnapshotError(f"{folder / MANIFEST} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise SnapshotError(f"{folder / MANIFEST} must hold a JSON object")
    splits = {name: read_jsonl(folder / fname, name) for name, fname in FILES.items()}
    if not splits["sft"]:
        raise SnapshotError(f"{folder / FILES['sft']} is missing or empty: nothing to train on")
    counts = manifest.get("counts")
    if isinstance(counts, dict):
        for name, recs in splits.items():
            if name in counts and counts[name] != len(recs):
                raise SnapshotError(f"{folder}: the manifest counts {counts[name]} {name} records, "
                                    f"{FILES[name]} holds {len(recs)}; the snapshot is incomplete")
    return Snapshot(folder, manifest, splits["sft"], splits["dpo"], splits["eval"])


def write_snapshot(folder: Path | str, *, version: str, sft: list[dict], dpo: list[dict] = (),
                   eval: list[dict] = (), **extra) -> Path:
    """Write a snapshot folder (validating every record). For tests and benchmarks; the
    dataset builder writes the same format."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"sft": list(sft), "dpo": list(dpo), "eval": list(eval)}
    for name, recs in splits.items():
        for i, rec in enumerate(recs):
            validate_record(name, rec, f"{name}[{i}]")
        with (folder / FILES[name]).open("w", encoding="utf-8") as fh:
            for rec in recs:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    manifest = {
        "version": version,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "counts": {name: len(recs) for name, recs in splits.items()},
        "task_types": {name: dict(Counter(r["task_type"] for r in recs)) for name, recs in splits.items()},
        **extra,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return folder
