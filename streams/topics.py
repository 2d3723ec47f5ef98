"""Topic names and their explicit creation (auto-created topics get the broker's default
partition count, which breaks faust's co-partitioning: see STACK_NOTES)."""

from __future__ import annotations

import logging
import time

from flywheel.errors import BrokerError
from flywheel.settings import Settings

log = logging.getLogger(__name__)

# Logical name -> what flows there. Keys: interactions by session id, feedback by request id.
TOPICS = {
    "interactions": "chat interactions (one record per request, all its drafts)",
    "feedback": "user feedback on a request's drafts",
    "dlq": "records that failed validation, with the reason",
    "deployments": "rollout decisions (start, advance, hold, promote, rollback...) with reasons and figures",
    "metrics": "live per-version window figures from the stream worker (deltas; keyed by version)",
    "reviews": "review decisions on curation candidates (approve, reject, edit, reset; keyed by candidate id)",
}


def topic_names(settings: Settings) -> dict[str, str]:
    return {name: settings.topic(name) for name in TOPICS}


def ensure_topics(bootstrap: str, names: list[str], partitions: int, timeout: float = 15.0) -> list[str]:
    """Create the topics that do not exist yet; return those created."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    deadline = time.monotonic() + timeout
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="flywheel-admin",
                                     request_timeout_ms=5000)
            break
        except KafkaError as e:
            if time.monotonic() > deadline:
                raise BrokerError(f"cannot reach Kafka at {bootstrap}: {e}. Is the broker running?") from None
            time.sleep(0.2)
    try:
        existing = set(admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            try:
                admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in missing])
            except TopicAlreadyExistsError:
                pass
            log.info("created topics %s with %d partitions", missing, partitions)
        return missing
    finally:
        admin.close()
