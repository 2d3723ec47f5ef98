"""One settings object per process: defaults < TOML file < ``FLYWHEEL_*`` environment.

Loaded once (``load_settings``) at the edge of a process and passed down; library code
never reads ``os.environ``. Environment keys name a section and a field with a double
underscore: ``FLYWHEEL_GATEWAY__PORT=9000``, ``FLYWHEEL_KAFKA__BOOTSTRAP=host:9092``.
Top-level fields take one underscore: ``FLYWHEEL_DATA_DIR=/srv/flywheel``.

Secrets (API keys, the pseudonym salt) are ``SecretStr``: printed masked (``flywheel
config``), read with ``.get_secret_value()`` where they are used, and passed in clear only
to child processes (:func:`settings_env`).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from flywheel.errors import ConfigError

ENV_PREFIX = "FLYWHEEL_"
DEFAULT_CONFIG_FILE = "flywheel.toml"


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
ServingBackend = Literal["local", "openai", "scripted"]
RolloutMethod = Literal["beta-binomial", "two-proportion"]
#: PII kinds the redactor knows (streams/redact.py runs them in its own order).
PIIKind = Literal["EMAIL", "PHONE", "CN_ID", "BANK_CARD", "IP", "SECRET", "SSN", "IBAN", "PASSPORT"]
#: What curation's language detection answers (training/curation/clean.py).
Language = Literal["en", "zh", "mixed", "other", "und"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpenAIEndpoint(_Section):
    """An OpenAI-compatible endpoint: the one type the serving upstream (``model.upstream``),
    the teacher and the judge are reached through. The teacher and judge sections are
    endpoints with options of their own; the upstream's fields keep their ``model.upstream_*``
    names."""

    base_url: str = Field("", description="Base URL of the OpenAI-compatible endpoint, e.g. http://vllm:8000/v1.")
    api_key: SecretStr = Field(
        SecretStr(""), description="Bearer key of the endpoint (empty: none). Secret: printed masked.")
    model: str = Field("", description="Model name to ask for.")
    timeout_s: float = Field(60.0, gt=0, description="Timeout of one request.")
    retries: int = Field(
        3, ge=0, description="Retries of a failed request (connection, timeout, 408/409/429, 5xx) by the openai client, "
        "which backs off exponentially or waits as the server's Retry-After says.")


class KafkaSettings(_Section):
    bootstrap: str = Field(
        "", description="Kafka bootstrap servers (host:port,...). Empty: start the embedded broker."
    )
    embedded_port: int = Field(19092, description="Port of the embedded broker (tansu) on 127.0.0.1.")
    partitions: int = Field(4, ge=1, description="Partitions of each flywheel topic, created explicitly.")
    topic_prefix: str = Field("flywheel.", description="Prefix of every topic name.")
    client_id: str = Field("flywheel", description="Kafka client id prefix.")


class SpoolSettings(_Section):
    max_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="Bound of the on-disk event spool; beyond it new events are refused (503)."
    )
    segment_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Size at which the spool starts a new segment file.")
    fsync: bool = Field(False, description="fsync every append (survives power loss, slower).")
    send_batch: int = Field(2000, ge=1, description="Events sent to Kafka per replay batch.")


class EventSettings(_Section):
    max_event_bytes: int = Field(
        1_000_000, ge=1024, le=64 * 1024 * 1024, description="Largest event, serialised, that is spooled and sent to "
        "Kafka. A chat request or feedback whose event would be larger gets 413 before any work; drafts are cut to fit "
        "(tags.labels.truncated = \"drafts\", docs/reliability.md). The producer's max_request_size follows it; "
        "Apache Kafka refuses records over message.max.bytes (1048588 by default): raise it there before raising this.")


class LandingSettings(_Section):
    group_id: str = Field("flywheel-landing", description="Consumer group of the landing consumer.")
    batch_max: int = Field(5000, ge=1, description="Most events written to DuckDB in one transaction.")
    poll_ms: int = Field(200, ge=1, description="Longest wait for a batch.")
    session_timeout_ms: int = Field(6000, ge=1000, description="Consumer session timeout (group joins wait half of it).")


class GatewaySettings(_Section):
    host: str = Field("127.0.0.1", description="Interface the gateway binds.")
    port: int = Field(8000, description="Gateway port.")
    threads: int = Field(32, ge=1, description="Request threads of the gateway's WSGI server.")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body; larger gets 413.")
    max_n: int = Field(8, ge=1, description="Most drafts (n) one chat request may ask for.")
    max_tokens_limit: int = Field(2048, ge=1, description="Largest max_tokens a request may ask for.")
    max_batch_events: int = Field(1000, ge=1, description="Most items in one POST /v1/events batch.")
    auth: bool = Field(True, description="Require bearer API keys.")
    keys_file: str = Field("", description="File of hashed API keys. Empty: DATA_DIR/api_keys.json.")
    app: str = Field("default", description="App name recorded on interactions that do not name one.")
    routing_poll_s: float = Field(
        2.0, ge=0, description="How often the gateway fetches the routing table from the control plane (0: never)."
    )
    rate_limit_rps: float = Field(
        50.0, ge=0, description="Requests per second each API key may make, on average (a token bucket refilled at this "
        "rate; without auth, per client address). Beyond it: 429 with Retry-After. 0: no rate limit.")
    rate_limit_burst: int = Field(
        100, ge=1, description="Requests one API key may make at once before rate_limit_rps applies (the bucket's size).")
    max_concurrent_per_key: int = Field(
        16, ge=0, description="Requests one API key may have in flight (a stream counts until it ends); more get 429. "
        "Keep it below gateway.threads so one key cannot take every thread. 0: no cap.")
    feedback_binding_size: int = Field(
        100_000, ge=0, description="Recent requests the gateway remembers with the API key and user that made them "
        "(about 200 bytes each), so feedback on one of them from another key (404) or another user (403), or on a draft "
        "it does not have (400), is refused; feedback without a user takes the request's. Older requests are checked "
        "where feedback is counted (docs/reliability.md, \"Feedback integrity\"). 0: remember none.")


class ModelSettings(_Section):
    backend: ServingBackend = Field(
        "local", description="Serving backend: local (transformers), openai (an OpenAI-compatible server such as vLLM) "
        "or scripted (tests, benchmarks)."
    )
    alias: str = Field("flywheel-chat", description="Public model name clients ask for.")
    version: str = Field("base", description="Version the alias serves.")
    cache_dir: str = Field("~/.cache/flywheel/models", description="Where the bundled model is converted to HF format once.")
    max_batch: int = Field(16, ge=1, description="Most sequences decoded together by the local backend.")
    max_queue: int = Field(256, ge=1, description="Most requests waiting for the local backend before 503.")
    torch_threads: int = Field(
        0, ge=0, description="local backend: torch threads of the serving process (0: torch's default). 1 keeps a "
        "2-core machine's gateway responsive beside a training job (bench/serving_during_turn.py).")
    prefix_cache_mb: float = Field(
        256, ge=0, description="local backend: memory for the KV of shared prompt prefixes (the chart app's "
        "instructions, earlier turns), reused across requests of the same version and evicted least recently used "
        "first; 0 turns prefix caching off.")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request gives none.")
    upstream_url: str = Field("", description="openai backend: base URL of the server, e.g. http://vllm:8000/v1.")
    upstream_model: str = Field("SmolLM2-135M-Instruct", description="openai backend: the served base model's name.")
    upstream_api_key: SecretStr = Field(
        SecretStr(""), description="openai backend: bearer key for the upstream, if it needs one. Secret: printed masked.")
    upstream_timeout_s: float = Field(120.0, gt=0, description="openai backend: timeout of one upstream request.")
    upstream_concurrency: int = Field(64, ge=1, description="openai backend: most requests in flight upstream.")

    @property
    def upstream(self) -> OpenAIEndpoint:
        """The openai backend's upstream as an endpoint (the gateway does not retry it)."""
        return OpenAIEndpoint(base_url=self.upstream_url, api_key=self.upstream_api_key, model=self.upstream_model,
                              timeout_s=self.upstream_timeout_s, retries=0)


class PrivacySettings(_Section):
    redact: bool = Field(True, description="Redact PII before anything is emitted.")
    kinds: tuple[PIIKind, ...] = Field(
        ("EMAIL", "PHONE", "CN_ID", "BANK_CARD", "IP", "SECRET", "SSN", "IBAN", "PASSPORT"),
        description="PII kinds to redact (any case)."
    )
    extra_patterns: dict[str, str] = Field(default_factory=dict, description="Extra placeholder name -> regex.")
    user_salt: SecretStr = Field(
        SecretStr(""),
        description="Secret salt of pseudonymous user ids and hashed identifiers (HMAC-SHA256). Empty: in the local "
        "default setup (kafka.bootstrap empty, the embedded broker) a random one is generated once per data directory "
        "(DATA_DIR/user_salt, mode 0600); with an external broker the gateway refuses to start until it is set (the "
        "same for every gateway). The old public default flywheel-dev-salt counts as empty. Printed masked.")

    @field_validator("kinds", mode="before")
    @classmethod
    def _kinds_any_case(cls, v):
        return tuple(k.upper() if isinstance(k, str) else k for k in v) if isinstance(v, (list, tuple)) else v


class ControlSettings(_Section):
    host: str = Field("127.0.0.1", description="Interface of the control plane's JSON API.")
    port: int = Field(8100, description="Port of the control plane's JSON API.")
    token: SecretStr = Field(
        SecretStr(""), description="Operator token the CLI, the gateways and the control plane's jobs send to the "
        "control plane (Authorization: Bearer). Empty: the one in DATA_DIR/operator_token, which the control plane "
        "writes (mode 600) on its first start. Secret: printed masked.")
    operators_file: str = Field(
        "", description="File of hashed operator tokens with their roles (viewer, reviewer, admin), managed with "
        "`flywheel operators`. Empty: DATA_DIR/operators.json.")
    trusted_hosts: tuple[str, ...] = Field(
        ("localhost", "127.0.0.1"), description="Host header values the control plane and console answer (port "
        "ignored; a leading dot matches subdomains); others get 400, against DNS rebinding. control.host is added (the "
        "address the CLI and the plane's jobs call). Add the names clients use, e.g. the compose service name. Empty: "
        "any host (only behind a proxy that checks it).")
    session_hours: float = Field(12.0, gt=0, description="How long a console login lasts (signed session cookie).")


class RolloutSettings(_Section):
    steps: tuple[float, ...] = Field((5, 25, 50, 100), description="Canary weights (percent) a rollout steps through.")
    analysis_interval_s: float = Field(60, gt=0, description="Each step is analysed over windows of this length.")
    failure_threshold: int = Field(2, ge=1, description="Failed analyses that roll a candidate back.")
    min_feedback: int = Field(30, ge=1, description="Feedback events per version below which an analysis is inconclusive.")
    delta: float = Field(0.05, ge=0, le=1, description="Tolerated increase of the negative-feedback rate.")
    method: RolloutMethod = Field("beta-binomial", description="Negative-feedback test: beta-binomial or two-proportion.")
    tick_s: float = Field(5, gt=0, description="How often the control plane checks whether an analysis is due.")
    source: Literal["landed", "stream"] = Field(
        "landed", description="Figures the analysis reads: landed (interactions + feedback in DuckDB) or stream "
        "(the stream worker's live windows). Only landed counts feedback as docs/reliability.md says (bound to the "
        "request's user, duplicates collapsed, max_feedback_per_user); stream counts every event as it passes.")
    max_feedback_per_user: int = Field(
        5, ge=0, description="Feedback events of one user (or, without a user, one session) that count in a version's "
        "analysis window: the latest ones. With min_feedback = 30, a verdict needs at least 6 people, and no one is more "
        "than a sixth of it. 0: no cap.")


class StreamSettings(_Section):
    window_s: float = Field(60, gt=0, description="Length of the live-metrics tumbling windows (seconds).")
    flush_s: float = Field(5, gt=0, description="How often the stream worker publishes its window deltas and commits.")
    join_wait_s: float = Field(
        120, ge=0, description="How long feedback waits for its interaction before it is counted under version 'unknown'.")
    request_ttl_s: float = Field(6 * 3600, gt=0, description="How long the worker remembers which version served a request.")
    max_requests: int = Field(1_000_000, ge=1, description="Most requests the worker remembers (oldest forgotten first).")
    max_pending_feedback: int = Field(
        100_000, ge=1, description="Most feedback events waiting for their interaction (join_wait_s); past it the oldest "
        "is counted under version 'unknown' at once (an eviction, counted in the worker's log).")
    group_id: str = Field("flywheel-metrics", description="faust app id: the consumer group of the stream worker.")
    session_timeout_s: float = Field(10, gt=0, description="Consumer session timeout of the stream worker.")


class CurationSettings(_Section):
    watermark_lag_s: float = Field(
        5.0, ge=0, description="Mining reads events landed up to this many seconds ago (landing transactions still open "
        "carry an earlier landed_at; the lag lets them commit first).")
    embed_batch_size: int = Field(64, ge=1, description="Texts per embedding batch.")
    min_prompt_chars: int = Field(2, ge=0, description="Shorter prompts are dropped (too-short).")
    max_prompt_chars: int = Field(20_000, ge=1, description="Longer prompts are dropped (too-long).")
    min_response_chars: int = Field(2, ge=0, description="Shorter responses are dropped (too-short).")
    max_response_chars: int = Field(8_000, ge=1, description="Longer responses are dropped (too-long).")
    max_char_run: int = Field(12, ge=2, description="A character repeated this many times in a row drops the item.")
    min_unique_word_ratio: float = Field(
        0.3, ge=0, le=1, description="Responses of 12+ words with a smaller share of distinct words are dropped (repetitive).")
    languages: tuple[Language, ...] = Field(
        ("en", "mixed", "und"), description="Languages kept (en, zh, mixed, other, und: too short to tell).")
    drop_bad_labels: bool = Field(True, description="Drop candidates whose cleaned label is bad.")
    drop_unknown_labels: bool = Field(False, description="Drop candidates whose cleaned label is unknown (no reliable vote).")
    rater_min_items: int = Field(5, ge=1, description="Comparisons a rater needs before being judged reliable/random/reverse.")
    taxonomy_path: str = Field("", description="Task-type taxonomy YAML replacing the domains' task types. Empty: the "
                               "task types of the loaded domains.")
    task_threshold: float = Field(0.5, ge=0, le=1, description="Task-type confidence below which a candidate is 'unknown'.")
    drop_unknown_task_types: bool = Field(False, description="Drop candidates whose task type is unknown.")
    teacher_task_types: bool = Field(
        True, description="Ask the teacher for the task type of kept candidates the classifier left unknown, when the "
        "teacher is an endpoint (teacher.kind = openai).")
    dedup_threshold: float | None = Field(
        None, ge=0, le=1, description="Cosine similarity from which prompts are near-duplicates. Empty/null: chosen from "
        "the similarity distribution (reported in the funnel).")
    dedup_earlier_limit: int = Field(
        50_000, ge=0, description="Semantic dedup against prompts earlier runs kept: how many of the most recent ones "
        "to compare with (0: exact repeats only).")
    select_total: int = Field(5000, ge=1, description="Most candidates kept by K-Center-Greedy selection per run.")
    budgets: dict[str, float] = Field(
        default_factory=dict, description="Relative selection budget per task type, over the taxonomy's weights "
        "(e.g. {\"reasoning/math\": 2}).")
    golden: bool = Field(False, description="Run the Nuggets golden-score stage (slow: the served model scores pairs).")
    golden_anchors: int = Field(4, ge=1, description="Anchors per task type for the golden score.")
    hardness: bool = Field(False, description="Compute each kept answer's loss under the served model and tag the "
                           "hardest 'hard'.")
    hard_share: float = Field(0.1, ge=0, le=1, description="Share of kept candidates (highest loss) tagged 'hard'.")
    max_user_share: float = Field(
        0.1, gt=0, le=1, description="Largest share of a run's kept candidates one user's requests may be (users "
        "above it keep their best-scored ones, the rest are dropped at select as user-cap), but never fewer than "
        "user_share_floor each. 1: no cap.")
    user_share_floor: int = Field(
        20, ge=1, description="Candidates every user may keep in a run whatever max_user_share says (so a run with "
        "few users keeps something).")

    @field_validator("dedup_threshold", mode="before")
    @classmethod
    def _empty_is_auto(cls, v):
        return None if v == "" else v


class TrainingSettings(_Section):
    sft_config: str = Field("", description="SFT config YAML (SFTConfig + LoraConfig). Empty: training/trainers/configs/sft.yaml.")
    dpo_config: str = Field("", description="DPO config YAML (DPOConfig + LoraConfig). Empty: training/trainers/configs/dpo.yaml.")
    runs_dir: str = Field("", description="Where training runs write run.json, checkpoints and adapters. Empty: DATA_DIR/runs.")
    checkpoint_steps: int = Field(50, ge=1, description="Save a checkpoint every N optimizer steps (a killed job resumes there).")
    assistant_turns: Literal["all", "last"] = Field(
        "all", description="Multi-turn SFT loss on all assistant turns (all) or only the last one (last).")
    incremental: bool = Field(True, description="Continue from the production version's adapter (else a fresh LoRA on the base).")
    dpo: bool = Field(
        False, description="Run DPO after SFT when the dataset has preference pairs. Off by default: on the chart bench "
        "8 DPO steps after SFT made answers worse (a time filter where none was asked in 79% of answers, up from 47%; "
        "valid JSON down 7 points; docs/benchmarks.md), and the turn is faster without it.")
    threads: int = Field(
        0, ge=0, description="Torch (OpenMP/MKL) threads of the training and evaluation jobs, so serving on the same "
        "machine keeps a core. 0: the machine's cores less one (at least 1).")
    nice: int = Field(
        10, ge=0, le=19, description="Niceness the training and evaluation jobs run at (os.nice): the gateway's requests "
        "come first. 0: normal priority.")


class DatasetSettings(_Section):
    include_pending: bool = Field(
        False, description="Also build from candidates nobody reviewed yet (else only approved or edited ones).")
    unrated_drafts: bool = Field(
        False, description="Train on a served answer nobody rated when it passes its task's verifiers (the model "
        "learning its own output). Off: only answers a signal vouches for (an edit, a thumbs up, a chosen draft, "
        "an operator's decision) or the teacher's become targets; a verifier that checks an answer's shape cannot "
        "vouch for its content (on the chart bench 40 of 41 such targets were wrong, docs/benchmarks.md).")
    eval_share: float = Field(0.1, ge=0, lt=1, description="Share of each task type held out for evaluation (by dedup group).")
    eval_min_per_type: int = Field(2, ge=0, description="Held-out items per task type at least, when it has 3x as many.")
    replay_ratio: float = Field(
        0.3, ge=0, le=1, description="General replay records per SFT record (training/data/general.jsonl, 44 records "
        "at most), against forgetting; SFT's flywheel.replay_loss says how they train (kl: toward the base model's "
        "distribution).")
    hard_weight: float = Field(2.0, gt=0, description="Training weight of candidates tagged 'hard'.")
    relabel: bool = Field(
        False, description="Ask the teacher (section teacher) for a target when a kept candidate's answer is bad and "
        "nobody corrected it; only answers that pass the verifiers are used. Set curation.drop_bad_labels = false so "
        "candidates with bad answers are kept (typed, deduplicated) for it.")


class ReviewSettings(_Section):
    auto_approve: bool = Field(
        True, description="Apply the auto rules below to pending candidates after each curation run, so the scheduled "
        "refresh runs without a person (their decisions are review events from 'auto:approve'/'auto:reject'; they never "
        "change a candidate a person decided). Off: every candidate waits for `flywheel review`.")
    approve_min_confidence: float = Field(
        0.9, ge=0, le=1, description="Auto rule: approve a candidate whose cleaned label is good with at least this confidence.")
    approve_edits: bool = Field(
        True, description="Auto rule: approve a candidate answered by the user's own edit unless its label is bad, when "
        "the user is trusted (approve_edits_min_trust).")
    approve_edits_min_trust: float = Field(
        0.8, ge=0, le=1, description="Trust an edit's user needs for approve_edits: the accuracy rater cleaning "
        "estimates for a user it judged reliable (0 for unknown, random and reverse raters and users without "
        "feedback). 0: any user's edit (the behaviour before issue #13).")
    reject_bad: bool = Field(True, description="Auto rule: reject a candidate whose cleaned label is bad (see reject_min_confidence).")
    reject_min_confidence: float = Field(0.9, ge=0, le=1, description="Auto rule: confidence a bad label needs to reject.")
    task_types: tuple[str, ...] = Field(
        (), description="Task types (or groups, e.g. data-viz) the auto rules apply to. Empty: all.")
    wait_landed_s: float = Field(
        30.0, ge=0, description="How long `flywheel review` waits for its decisions to be acknowledged and landed.")


class TeacherSettings(OpenAIEndpoint):
    """The teacher: its endpoint (base_url, api_key, model, timeout_s, retries: used when
    kind = openai) and its options."""

    kind: Literal["local", "openai"] = Field(
        "local", description="Who relabels: local (the bundled model, few-shot, constrained, best-of-N; offline) or openai "
        "(any OpenAI-compatible endpoint, e.g. vLLM serving a large model).")
    samples: int = Field(4, ge=1, le=16, description="Samples per prompt; the verifiers pick the best (best-of-N).")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature of the teacher's samples.")
    few_shot: int = Field(3, ge=0, le=8, description="local teacher: worked examples drawn at random from the pool per prompt.")
    constrained: bool = Field(
        True, description="local teacher: constrain decoding to the task's output schema where it has one (chart-config JSON "
        "with names from the prompt's lists).")
    pool_path: str = Field("", description="local teacher: a few-shot pool YAML whose examples go in front of the "
                           "domains' own. Empty: the domains' examples only.")
    backoff_s: float = Field(
        0.5, ge=0, description="No longer used (accepted so existing files load): retries back off as the openai client "
        "does (0.5 s doubling up to 8 s) or as the server's Retry-After says.")
    concurrency: int = Field(4, ge=1, description="openai teacher: most requests in flight.")
    max_tokens: int = Field(256, ge=1, description="Longest teacher answer in tokens.")
    price_prompt_per_1k: float = Field(0.0, ge=0, description="openai teacher: cost of 1,000 prompt tokens (for the tally).")
    price_completion_per_1k: float = Field(
        0.0, ge=0, description="openai teacher: cost of 1,000 completion tokens (for the tally).")
    audit_file: str = Field(
        "", description="Where teacher calls are logged as JSONL when no database connection is given. Empty: "
        "DATA_DIR/teacher_calls.jsonl.")


class JudgeSettings(OpenAIEndpoint):
    """The pairwise judge's endpoint; an empty base_url, api_key or model is the teacher's."""

    base_url: str = Field("", description="Pairwise judge: base URL of an OpenAI-compatible endpoint (empty: the teacher's).")
    api_key: SecretStr = Field(SecretStr(""), description="Pairwise judge: bearer key (empty: the teacher's). Printed masked.")
    model: str = Field("", description="Pairwise judge: model name (empty: the teacher's).")
    timeout_s: float = Field(60.0, gt=0, description="Pairwise judge: timeout of one request.")
    retries: int = Field(2, ge=0, description="Pairwise judge: retries of a failed request (as the teacher's).")

    def resolve(self, teacher: OpenAIEndpoint) -> OpenAIEndpoint:
        """The endpoint the judge asks: its own, each empty base_url/api_key/model taken from ``teacher``."""
        return OpenAIEndpoint(base_url=self.base_url or teacher.base_url,
                              api_key=self.api_key if self.api_key.get_secret_value() else teacher.api_key,
                              model=self.model or teacher.model, timeout_s=self.timeout_s, retries=self.retries)


class EvaluateSettings(_Section):
    max_tokens: int = Field(192, ge=1, description="Longest answer generated per held-out prompt.")
    resample_k: int = Field(4, ge=1, description="Samples per prompt and version when a task type seems to drop (pass@k).")
    resample_temperature: float = Field(0.8, gt=0, description="Sampling temperature of the resampling.")
    max_loss_increase: float = Field(
        0.0, description="A task type fails when the lower end of its reference-loss increase (nats/token, 95% CI) "
        "exceeds this. Negative: each task type must lower its loss by at least that much.")
    max_pass_rate_drop: float = Field(0.0, ge=0, le=1, description="Largest allowed drop of the overall verifier pass rate.")
    max_forgetting: float = Field(
        0.05, ge=0, description="Largest allowed relative increase of the general set's reference loss (forgetting).")
    report_samples: int = Field(20, ge=0, description="Answers shown side by side in the report.")
    judge_human_pairs: int = Field(
        50, ge=0, description="With a judge: how many of the dataset's human preference pairs (edits, chosen drafts) "
        "it also judges, to report its agreement with people.")


class RefreshSettings(_Section):
    cron: str = Field(
        "", description="When the scheduler turns the flywheel (mine, dataset, train, evaluate, canary): a crontab line "
        "in UTC, minute hour day month day-of-week, e.g. \"0 3 * * *\" (03:00 every day) or \"0 */6 * * mon-fri\" (name "
        "the days: APScheduler counts 0 as Monday). Empty: no cron schedule. One of cron, interval_min, interval_h.")
    interval_min: float = Field(
        0, ge=0, description="Minutes between scheduled flywheel turns (instead of cron). 0: none; without any schedule "
        "turns run only on request (`flywheel refresh`) or after_feedback.")
    interval_h: float = Field(
        0, ge=0, description="Deprecated (use interval_min = 60 * hours): hours between scheduled turns; still honoured, "
        "with a warning in the control plane's log.")
    after_feedback: int = Field(
        0, ge=0, description="Also start a turn once this many feedback events have landed since the last turn started "
        "(counted every check_s seconds). 0: off.")
    check_s: float = Field(60.0, gt=0, description="How often the after_feedback count is checked (one COUNT query).")
    min_sft_records: int = Field(20, ge=1, description="A turn stops before training when the dataset has fewer SFT records.")
    train_overrides: tuple[str, ...] = Field(
        (), description="`--set` overrides for the training job, e.g. [\"sft.args.max_steps=200\"].")
    auto_rollout: bool = Field(True, description="Start a canary rollout of a candidate that passes the gate.")

    @field_validator("cron")
    @classmethod
    def _crontab(cls, v: str) -> str:
        v = " ".join(v.split())
        if v:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(v, timezone="UTC")
            except ValueError as e:
                raise ValueError(f"{v!r} is not a crontab line (minute hour day month day-of-week): {e}") from None
        return v

    @model_validator(mode="after")
    def _one_schedule(self) -> "RefreshSettings":
        chosen = [name for name in ("cron", "interval_min", "interval_h") if getattr(self, name)]
        if len(chosen) > 1:
            raise ValueError(f"set one schedule, not {' and '.join(chosen)} (after_feedback combines with any)")
        return self

    @property
    def every_min(self) -> float:
        """The interval schedule in minutes (the deprecated interval_h converted); 0: none."""
        return self.interval_min or self.interval_h * 60


class DomainSettings(_Section):
    modules: tuple[str, ...] = Field(
        (), description="Domain plugins to load besides the installed ones (entry-point group flywheel.domains), as "
        "\"package.module:attribute\" naming a flywheel.domains.Domain (docs/domains.md).")

    @field_validator("modules")
    @classmethod
    def _module_paths(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for ref in v:
            module, sep, attr = ref.partition(":")
            if not sep or not module.strip() or not attr.strip():
                raise ValueError(f"{ref!r} must be 'package.module:attribute'")
        return v


class Settings(_Section):
    data_dir: str = Field("./data", description="Folder of the DuckDB file, spool, keys and logs.")
    log_level: LogLevel = Field(
        "INFO", description="Log level of every process: DEBUG, INFO, WARNING, ERROR or CRITICAL (any case).")
    kafka: KafkaSettings = KafkaSettings()
    spool: SpoolSettings = SpoolSettings()
    events: EventSettings = EventSettings()
    landing: LandingSettings = LandingSettings()
    gateway: GatewaySettings = GatewaySettings()
    model: ModelSettings = ModelSettings()
    privacy: PrivacySettings = PrivacySettings()
    control: ControlSettings = ControlSettings()
    rollout: RolloutSettings = RolloutSettings()
    curation: CurationSettings = CurationSettings()
    stream: StreamSettings = StreamSettings()
    datasets: DatasetSettings = DatasetSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    refresh: RefreshSettings = RefreshSettings()
    training: TrainingSettings = TrainingSettings()
    review: ReviewSettings = ReviewSettings()
    teacher: TeacherSettings = TeacherSettings()
    judge: JudgeSettings = JudgeSettings()
    domains: DomainSettings = DomainSettings()

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, v):
        return v.upper() if isinstance(v, str) else v

    # -- derived paths -------------------------------------------------------------
    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def db_path(self) -> Path:
        return self.data_path / "flywheel.duckdb"

    @property
    def runs_path(self) -> Path:
        return Path(self.training.runs_dir).expanduser().resolve() if self.training.runs_dir else self.data_path / "runs"

    @property
    def spool_path(self) -> Path:
        return self.data_path / "spool"

    @property
    def keys_path(self) -> Path:
        return Path(self.gateway.keys_file).expanduser() if self.gateway.keys_file else self.data_path / "api_keys.json"

    @property
    def operators_path(self) -> Path:
        """Hashed operator tokens (services/control/operators.py)."""
        return Path(self.control.operators_file).expanduser() if self.control.operators_file else (
            self.data_path / "operators.json")

    @property
    def operator_token_path(self) -> Path:
        """The local admin token the control plane's first start writes, for the CLI and you."""
        return self.data_path / "operator_token"

    @property
    def model_cache_path(self) -> Path:
        return Path(self.model.cache_dir).expanduser()

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway.host}:{self.gateway.port}"

    @property
    def control_url(self) -> str:
        return f"http://{self.control.host}:{self.control.port}"

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap or f"127.0.0.1:{self.kafka.embedded_port}"

    def topic(self, name: str) -> str:
        return f"{self.kafka.topic_prefix}{name}"

    def replace(self, **changes) -> "Settings":
        """A copy with some fields changed; nested sections as dicts: replace(gateway={"port": 1})."""
        data = self.model_dump()
        _deep_merge(data, changes)
        return Settings.model_validate(data)


def _deep_merge(base: dict, extra: Mapping) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def _env_overrides(env: Mapping[str, str]) -> dict:
    out: dict = {}
    sections = {name for name, f in Settings.model_fields.items() if isinstance(f.default, BaseModel)}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX) or key == "FLYWHEEL_CONFIG":
            continue
        name = key[len(ENV_PREFIX):].lower()
        section, sep, field = name.partition("__")
        if sep:
            if section not in sections:
                raise ConfigError(f"{key}: unknown settings section {section!r} (known: {', '.join(sorted(sections))})")
            info = type(Settings.model_fields[section].default).model_fields.get(field)
            out.setdefault(section, {})[field] = _parse_env_value(raw, info.annotation if info else None)
        else:
            info = Settings.model_fields.get(name)
            out[name] = _parse_env_value(raw, info.annotation if info else None)
    return out


def _is_text(annotation) -> bool:
    return annotation in (str, SecretStr) or (
        get_origin(annotation) is Literal and all(isinstance(a, str) for a in get_args(annotation)))


def _parse_env_value(raw: str, annotation=None):
    # JSON for lists/dicts/numbers/booleans; anything else stays a string. A text setting
    # keeps the raw string unless it is a JSON string: a salt "12345" or a key "1e5" stays as written.
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return raw if _is_text(annotation) and not isinstance(value, str) else value


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the TOML file (``path``, else ``$FLYWHEEL_CONFIG``, else ./flywheel.toml if
    present), then ``FLYWHEEL_*`` variables. Errors name the offending key."""
    env = os.environ if env is None else env
    data: dict = {}
    path = path or env.get("FLYWHEEL_CONFIG")
    if path is None and Path(DEFAULT_CONFIG_FILE).is_file():
        path = DEFAULT_CONFIG_FILE
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"settings file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"settings file {path} is not valid TOML: {e}") from None
    _deep_merge(data, _env_overrides(env))
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid settings: {problems}") from None


def _reveal(value):
    """``json.dumps`` default: a secret's real value (for child processes and defaults only)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``FLYWHEEL_*`` variables that reproduce ``settings`` exactly in a child process
    (jobs the control plane starts see the same settings, whatever file they came from).
    Secrets are passed in clear: the child needs them."""
    env = {}
    for name, value in settings.model_dump().items():
        if isinstance(value, dict) and isinstance(getattr(settings, name), BaseModel):
            for key, inner in value.items():
                env[f"{ENV_PREFIX}{name.upper()}__{key.upper()}"] = json.dumps(inner, default=_reveal)
        else:
            env[f"{ENV_PREFIX}{name.upper()}"] = json.dumps(value, default=_reveal)
    return env


def describe_settings() -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every setting: used by docs and `flywheel config`."""
    rows = []
    for name, field in Settings.model_fields.items():
        if isinstance(field.default, BaseModel):
            for sub, sf in type(field.default).model_fields.items():
                default = sf.default if sf.default_factory is None else sf.default_factory()
                rows.append((f"{name}.{sub}", json.dumps(default, default=_reveal), sf.description or ""))
        else:
            rows.append((name, json.dumps(field.default, default=_reveal), field.description or ""))
    return rows


def settings_markdown() -> str:
    """The settings table of docs/settings.md (`flywheel config --markdown`)."""
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    rows += [f"| `{key}` | `{default}` | {text} |" for key, default, text in describe_settings()]
    return "\n".join(rows) + "\n"
