"""Domains: what an app brings to Flywheel, as plugins.

A domain (`Domain`) declares its task types (taxonomy entries with seeds), a verifier per
task type, an output JSON Schema where answers have one, the teacher's few-shot examples,
and the judge's rubric. Flywheel finds domains through the entry-point group
``flywheel.domains`` and the settings list ``domains.modules`` (`load_domains`); its own
``chart`` and ``general`` domains are plugins of the same kind. See docs/domains.md.

This package is the lowest layer: it imports nothing from training/, serving/,
services/, streams/ or the simulator (which is one of its clients).
"""

from flywheel.domains.domain import Domain, Example, GenericChecks, OutputSchema, Task, TaskType, Verdict, Verifier
from flywheel.domains.errors import DomainError
from flywheel.domains.loader import (
    ENTRY_POINT_GROUP,
    Domains,
    active_domains,
    configure_domains,
    domains_for,
    load_domains,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Domain",
    "DomainError",
    "Domains",
    "Example",
    "GenericChecks",
    "OutputSchema",
    "Task",
    "TaskType",
    "Verdict",
    "Verifier",
    "active_domains",
    "configure_domains",
    "domains_for",
    "load_domains",
]
