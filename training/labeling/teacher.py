"""The teacher: better answers for prompts the served model got wrong.

One interface, ``Teacher.label(task_type, messages) -> TeacherAnswer``, two kinds:

- ``openai`` (`OpenAITeacher`): any OpenAI-compatible endpoint (vLLM serving a large
  model, a hosted API); several samples in one request (``n``), retries with backoff,
  a timeout, a concurrency limit and a token/cost tally (`training.chat_client`);
- ``local`` (`LocalTeacher`, the offline default): the bundled base model with a few
  worked examples per task type drawn at random from a pool (the loaded domains' examples,
  `flywheel.domains`), several samples per prompt at ``temperature``, decoding
  constrained to the task's output JSON Schema where its domain gives one
  (`training.labeling.constrained`: chart JSON with names from the prompt's lists).

Tool calls (issue 12): ``label(..., tools=, tool_choice=)`` labels a request that offered
tools. The openai teacher passes ``tools`` and ``tool_choice`` to the endpoint
(``ChatClient.chat`` passes a ``response_format`` too; the teacher sends none, so that a
large model may reason before its final answer); the local teacher renders the tools as
the local backend does (Hermes format) and decodes each sample under the serving side's
llguidance grammar of one call (`ToolCallProcessor`: an offered function, arguments valid
under its schema). Samples are verified with the tool-call verifier.

Either way the verifiers (`training.labeling.verify`) choose the best sample (best-of-N: passing
first, then the higher score, then the earlier sample) after `final_answer` strips any
step-by-step reasoning. The answer is returned even when no sample passes
(``TeacherAnswer.passed`` says so); callers keep only what they can trust.

User corrections (``edit`` feedback) and operators' edits outrank any teacher:
`best_target` returns them, and the datasets builder asks the teacher only when there is
none. Every call is recorded for audit (`TeacherAudit`): into the ``teacher_calls`` table
when the caller holds the DuckDB connection (the control plane), else as JSONL lines.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

from flywheel.domains import DomainError, Domains, active_domains, domains_for
from flywheel.domains.files import read_examples
from training.chat_client import ChatClient
from training.errors import TeacherError
from training.labeling.verify import Verdict, verify, verify_answer_calls

__all__ = [
    "LocalTeacher",
    "OpenAITeacher",
    "Target",
    "Teacher",
    "TeacherAnswer",
    "TeacherAudit",
    "best_target",
    "choose_best",
    "final_answer",
    "make_teacher",
]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- answers


@dataclass
class TeacherAnswer:
    """The chosen `answer` (final answer only), every sample, their verdicts, which one
    was chosen, where it came from (``teacher:<kind>:<model>``) and the tokens spent."""

    answer: str | None
    samples: list[str]
    verdicts: list[Verdict]
    chosen_index: int | None
    source: str
    tokens: dict = field(default_factory=lambda: {"prompt": 0, "completion": 0})

    @property
    def passed(self) -> bool:
        return self.chosen_index is not None and self.verdicts[self.chosen_index].passed


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FINAL = re.compile(r"(?:final answer|the answer is)\s*[:：]?\s*", re.IGNORECASE)


def final_answer(text: str | None, task_type: str | None = None, *, domains: Domains | None = None) -> str:
    """The part of a teacher's reply that becomes a training target: ``<think>`` blocks
    dropped, the text after the last "Final answer:" when there is one; the task type's
    target form when its domain gives one and it is found (for chart-config the bare
    compact JSON of the configuration)."""
    text = _THINK.sub("", text or "").strip()
    marks = list(_FINAL.finditer(text))
    if marks and text[marks[-1].end():].strip():
        text = text[marks[-1].end():].strip()
    target = (domains or active_domains()).target(task_type, text)
    return target if target is not None else text


def choose_best(verdicts: Sequence[Verdict]) -> int | None:
    """Best-of-N: the first passing sample, else the highest score (earliest on ties)."""
    if not verdicts:
        return None
    return max(range(len(verdicts)), key=lambda i: (verdicts[i].passed, verdicts[i].score, -i))


@dataclass(frozen=True)
class Target:
    """A training target that outranks the teacher: its text and where it came from."""

    text: str
    source: str  # operator-edit | user-edit


def best_target(candidate_row: dict) -> Target | None:
    """The correction to train on for a curation candidate, when there is one: an
    operator's edit in review (``review_action == 'edit'`` or ``state == 'edited'``, with
    ``edited_response``) first, then the user's own ``edit`` feedback (``response_source ==
    'edit'``); None when neither exists (then the teacher may be asked)."""
    edited = candidate_row.get("edited_response")
    if edited and edited.strip() and (candidate_row.get("review_action") == "edit" or candidate_row.get("state") == "edited"):
        return Target(edited, "operator-edit")
    response = candidate_row.get("response")
    if candidate_row.get("response_source") == "edit" and response and response.strip():
        return Target(response, "user-edit")
    return None


# ----------------------------------------------------------------------------- audit


class TeacherAudit:
    """Records teacher calls: into ``teacher_calls`` through `conn` (a DuckDB connection
    the caller owns, i.e. the control plane), else appended to the JSONL file `path`."""

    def __init__(self, conn=None, path: str | Path | None = None):
        if conn is None and path is None:
            raise ValueError("TeacherAudit needs a DuckDB connection or a JSONL path")
        self.conn, self.path = conn, Path(path) if path is not None else None
        self._lock = threading.Lock()

    def record(self, call: dict) -> None:
        with self._lock:
            if self.conn is not None:
                self.conn.execute(
                    "INSERT INTO teacher_calls (call_id, created_at, kind, model, task_type, prompt, samples, verdicts, chosen, "
                    "answer, passed, prompt_tokens, completion_tokens, latency_ms, error) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [call["call_id"], call["created_at"], call["kind"], call["model"], call["task_type"],
                     json.dumps(call["prompt"]), json.dumps(call["samples"]), json.dumps(call["verdicts"]), call["chosen"],
                     call["answer"], call["passed"], call["prompt_tokens"], call["completion_tokens"], call["latency_ms"],
                     call["error"]],
                )
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({**call, "created_at": call["created_at"].isoformat()}, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------- teachers


class Teacher:
    """Base: sampling is the subclass's (`_sample`); verifying, choosing and auditing here."""

    kind = "teacher"
    model = ""

    def __init__(self, *, samples: int = 4, temperature: float = 0.7, max_tokens: int = 256,
                 audit: TeacherAudit | None = None, domains: Domains | None = None):
        self.samples, self.temperature, self.max_tokens = samples, temperature, max_tokens
        self.audit = audit
        self._domains = domains

    @property
    def domains(self) -> Domains:
        """The domains whose verifiers, target forms and schemas this teacher uses."""
        return self._domains or active_domains()

    @property
    def source(self) -> str:
        return f"teacher:{self.kind}:{self.model}" if self.model else f"teacher:{self.kind}"

    def _sample(self, task_type: str, messages: list[dict], tools: list[dict] | None = None,
                tool_choice=None) -> tuple[list[str], int, int]:
        raise NotImplementedError

    def label(self, task_type: str, messages: list[dict], *, tools: list[dict] | None = None,
              tool_choice=None) -> TeacherAnswer:
        """Samples for `messages`, verified; the best one's final answer. With `tools` (the
        request offered them), answers are tool calls in the Hermes text form, checked by the
        tool-call verifier. Raises `TeacherError` when the teacher cannot answer at all
        (recorded too)."""
        started = time.monotonic()
        call = {"call_id": uuid.uuid4().hex, "created_at": datetime.now(timezone.utc), "kind": self.kind, "model": self.model,
                "task_type": task_type, "prompt": messages, "samples": [], "verdicts": [], "chosen": None, "answer": None,
                "passed": False, "prompt_tokens": 0, "completion_tokens": 0, "latency_ms": 0.0, "error": None}
        try:
            texts, prompt_tokens, completion_tokens = (self._sample(task_type, messages, tools, tool_choice) if tools
                                                       else self._sample(task_type, messages))
        except TeacherError as exc:
            call.update(error=str(exc), latency_ms=round((time.monotonic() - started) * 1000, 1))
            if self.audit:
                self.audit.record(call)
            raise
        if tools:
            finals = [t.strip() for t in texts]
            verdicts = [verify_answer_calls(tools, f, tool_choice) for f in finals]
        else:
            finals = [final_answer(t, task_type, domains=self.domains) for t in texts]
            verdicts = [verify(task_type, messages, f, domains=self.domains) for f in finals]
        chosen = choose_best(verdicts)
        answer = TeacherAnswer(
            answer=finals[chosen] if chosen is not None else None, samples=texts, verdicts=verdicts, chosen_index=chosen,
            source=self.source, tokens={"prompt": prompt_tokens, "completion": completion_tokens},
        )
        call.update(samples=texts, verdicts=[v.to_dict() for v in verdicts], chosen=chosen, answer=answer.answer,
                    passed=answer.passed, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                    latency_ms=round((time.monotonic() - started) * 1000, 1))
        if self.audit:
            self.audit.record(call)
        return answer

    def label_many(self, items: Iterable[tuple[str, list[dict]]], *, progress=None) -> list[TeacherAnswer | None]:
        """`label` over ``(task_type, messages)`` items, in order; None where the teacher
        failed (the failure is in the audit). `progress(n_done)` is called after each."""
        out = []
        for i, (task_type, messages) in enumerate(items):
            try:
                out.append(self.label(task_type, messages))
            except TeacherError:
                out.append(None)
            if progress:
                progress(i + 1)
        return out

    def close(self) -> None:
        pass


class OpenAITeacher(Teacher):
    """A teacher behind an OpenAI-compatible endpoint (several samples per request)."""

    kind = "openai"

    def __init__(self, client: ChatClient, *, concurrency: int = 4, **kw):
        super().__init__(**kw)
        self.client = client
        self.model = client.model
        self.concurrency = concurrency

    @property
    def tally(self) -> dict:
        return self.client.tally.to_dict()

    def _sample(self, task_type, messages, tools=None, tool_choice=None):
        result = self.client.chat(messages, n=self.samples, temperature=self.temperature, max_tokens=self.max_tokens,
                                  tools=tools, tool_choice=tool_choice)
        return result.texts, result.prompt_tokens, result.completion_tokens

    def label_many(self, items, *, progress=None):
        items = list(items)
        done = [0]
        lock = threading.Lock()

        def one(item):
            try:
                return self.label(*item)
            except TeacherError:
                return None
            finally:
                if progress:
                    with lock:
                        done[0] += 1
                        progress(done[0])

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, items))


def load_pool(path: str | Path | None = None, *, seed: int = 0, domains: Domains | None = None) -> dict[str, list[dict]]:
    """The few-shot pool, ``{task_type: [{"user", "assistant"}]}``: the examples of the
    loaded domains (for chart-config, configurations of the simulator's ground truth with
    compact prompts: the lists and the request, without the instructions, which the real
    prompt gives), with the examples of the YAML file `path` (``teacher.pool_path``) in
    front of them. `seed` is kept for callers; the pool itself is fixed."""
    del seed
    pool: dict[str, list[dict]] = {}
    if path:
        try:
            extra = read_examples(path)
        except DomainError as exc:
            raise TeacherError(f"{exc} (set teacher.pool_path)") from exc
        for task_type, examples in extra.items():
            pool[task_type] = [{"user": ex.user, "assistant": ex.assistant} for ex in examples]
    for task_type, examples in (domains or active_domains()).examples().items():
        pool.setdefault(task_type, []).extend({"user": ex.user, "assistant": ex.assistant} for ex in examples)
    return pool


class LocalTeacher(Teacher):
    """The bundled model as a teacher: few-shot, several samples, constrained, best-of-N."""

    kind = "local"
    model = "smollm2-135m-instruct"

    def __init__(self, model_dir: str | Path, *, few_shot: int = 3, constrained: bool = True, pool: dict | None = None,
                 seed: int = 0, **kw):
        super().__init__(**kw)
        self.model_dir = Path(model_dir)
        self.few_shot, self.constrained = few_shot, constrained
        self.pool = pool if pool is not None else load_pool(seed=seed, domains=self._domains)
        self.rng = random.Random(seed)
        self.seed = seed
        self.calls = 0
        self._model = self._tokenizer = None
        self._lock = threading.Lock()
        self.stats = {"steps": 0, "scans": 0, "dead_ends": 0, "closing_steps": 0}

    def _load(self):
        if self._model is None:
            from serving.model_store import load_model

            self._model, self._tokenizer = load_model(self.model_dir)
        return self._model, self._tokenizer

    def prompt_messages(self, task_type: str, messages: list[dict]) -> list[dict]:
        """`messages` with `few_shot` examples of the task type, drawn at random, in front."""
        examples = self.pool.get(task_type, [])
        k = min(self.few_shot, len(examples))
        shots = self.rng.sample(examples, k) if k else []
        out: list[dict] = []
        for ex in shots:
            out += [{"role": "user", "content": ex["user"]}, {"role": "assistant", "content": ex["assistant"]}]
        return out + list(messages)

    def _schema(self, task_type: str, messages: list[dict]):
        """The decoder's schema: the task's output JSON Schema for this prompt, if any."""
        if not self.constrained:
            return None
        json_schema = self.domains.output_schema(task_type, messages)
        if json_schema is None:
            return None
        from training.labeling.constrained import UnsupportedSchema, from_json_schema

        try:
            return from_json_schema(json_schema)
        except UnsupportedSchema as exc:
            log.warning("decoding %s unconstrained: its output schema is beyond the decoder (%s)", task_type, exc)
            return None

    def _sample(self, task_type, messages, tools=None, tool_choice=None):
        import torch

        from training.labeling.constrained import JsonSchemaProcessor

        with self._lock:
            model, tok = self._load()
            prompt = self.prompt_messages(task_type, messages)
            if tools:
                from training.trainers.sft import render_tool_messages

                prompt = render_tool_messages(prompt, tools)  # the tools as the served model sees them
            ids = tok.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
            eos = tok.convert_tokens_to_ids("<|im_end|>")
            schema = None if tools else self._schema(task_type, messages)
            processors = []
            proc = None
            if tools and self.constrained:
                processors.append(ToolCallProcessor(tok, model, tools, tool_choice, ids.shape[1], eos,
                                                    self.samples if self.temperature > 0 else 1))
            if schema is not None:
                proc = JsonSchemaProcessor(tok, schema, ids.shape[1], eos, max_new_tokens=self.max_tokens)
                processors.append(proc)
            torch.manual_seed(self.seed * 100_003 + self.calls)
            self.calls += 1
            sampling = self.temperature > 0
            with torch.no_grad():
                out = model.generate(
                    ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_tokens, do_sample=sampling,
                    temperature=self.temperature if sampling else None, top_k=None, top_p=None,
                    num_return_sequences=self.samples if sampling else 1,
                    eos_token_id=eos, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos,
                    logits_processor=processors or None,
                )
            if proc is not None:
                for k in self.stats:
                    self.stats[k] += proc.stats[k]
            gen = out[:, ids.shape[1]:]
            texts, completion = [], 0
            for row in gen.tolist():
                if eos in row:
                    row = row[: row.index(eos) + 1]
                completion += len(row)
                texts.append(tok.decode(row, skip_special_tokens=True).strip())
            if not sampling:
                texts = texts * self.samples
            return texts, int(ids.shape[1]), completion

    def close(self) -> None:
        self._model = self._tokenizer = None


class ToolCallProcessor:
    """A Hugging Face logits processor that decodes each sequence under the serving side's
    llguidance grammar of one tool call (``serving.backends.local.tools.tool_grammar`` with
    ``tool_choice`` ``required`` or the named function, ``parallel_tool_calls`` false): the
    call names an offered function and its arguments validate against its schema. Once
    the call is complete only the end token may follow."""

    def __init__(self, tokenizer, model, tools: list[dict], tool_choice, prompt_len: int, eos: int, rows: int):
        from serving.backends.base import GenerationRequest
        from serving.backends.local.grammar import Grammars
        from serving.backends.local.tools import tool_grammar

        choice = tool_choice if isinstance(tool_choice, dict) else "required"
        request = GenerationRequest(messages=({"role": "user", "content": ""},), tools=tuple(tools), tool_choice=choice,
                                    parallel_tool_calls=False)
        vocab = model.get_output_embeddings().weight.shape[0]
        self.matchers = Grammars(tokenizer, [eos], vocab).for_constraint(tool_grammar(request, None), rows)
        self.prompt_len, self.eos = prompt_len, eos

    def __call__(self, input_ids, scores):
        import numpy as np
        import torch

        out = scores.clone()
        vocab = scores.shape[-1]
        nbytes = (vocab + 31) // 32 * 4
        for row, matcher in enumerate(self.matchers):
            if input_ids.shape[1] > self.prompt_len:
                token = int(input_ids[row, -1])
                if token != self.eos and not matcher.is_stopped():
                    matcher.consume_token(token)
            if matcher.is_stopped():
                out[row] = -float("inf")
                out[row, self.eos] = 0.0
                continue
            bits = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8, count=nbytes)
            allowed = torch.from_numpy(np.unpackbits(bits, bitorder="little")[:vocab].astype(bool))
            out[row] = torch.where(allowed, out[row], torch.tensor(-float("inf")))
        return out


def make_teacher(settings, *, conn=None, model_dir: str | Path | None = None, audit_path: str | Path | None = None) -> Teacher:
    """The teacher ``settings.teacher`` describes, auditing into `conn`'s ``teacher_calls``
    (when given) or the JSONL file (``teacher.audit_file``, default
    DATA_DIR/teacher_calls.jsonl)."""
    t = settings.teacher
    path = audit_path or t.audit_file or (Path(settings.data_dir).expanduser() / "teacher_calls.jsonl")
    audit = TeacherAudit(conn=conn) if conn is not None else TeacherAudit(path=path)
    common = dict(samples=t.samples, temperature=t.temperature, max_tokens=t.max_tokens, audit=audit,
                  domains=domains_for(settings))
    if t.kind == "openai":
        from training.chat_client import teacher_client

        client = teacher_client(settings)
        if client is None:
            raise TeacherError("teacher.kind is openai but teacher.base_url is empty: set the endpoint's URL")
        return OpenAITeacher(client, concurrency=t.concurrency, **common)
    if model_dir is None:
        from serving.model_store import ensure_hf_model

        model_dir = ensure_hf_model(settings.model_cache_path)
    return LocalTeacher(model_dir, few_shot=t.few_shot, constrained=t.constrained,
                        pool=load_pool(t.pool_path or None, domains=common["domains"]), **common)
