"""Finding the domains: installed plugins (entry points) and module paths from settings.

A plugin is an ordinary package that declares, in its ``pyproject.toml``::

    [project.entry-points."flywheel.domains"]
    my-domain = "my_package.domain:domain"

where ``domain`` is a `flywheel.domains.Domain` (or a function returning one). Flywheel's
own domains (``chart``, ``general``) are registered the same way, so every run goes
through this mechanism. Settings can add modules that are not installed as packages:
``domains.modules = ["my_package.domain:domain"]``.

`load_domains` loads and checks them (a broken plugin is a `DomainError` naming it and
what is wrong) and returns a `Domains` registry: the task types, verifiers, output schemas,
few-shot examples and rubrics of all of them, by task type. The process keeps one such
registry (`active_domains`); `configure_domains` sets the modules from settings it
includes (`domains_for(settings)` does both).
"""

from __future__ import annotations

import importlib
import threading
from importlib import metadata
from typing import Any, Iterable, Mapping, Sequence

from flywheel.domains.domain import Domain, Example, GenericChecks, Task, TaskType, Verifier
from flywheel.domains.errors import DomainError

__all__ = ["ENTRY_POINT_GROUP", "Domains", "active_domains", "configure_domains", "domains_for", "load_domains"]

ENTRY_POINT_GROUP = "flywheel.domains"


class Domains:
    """The loaded domains, looked up by task type."""

    def __init__(self, domains: Sequence[Domain], sources: Sequence[str] | None = None):
        self.domains: tuple[Domain, ...] = tuple(domains)
        self.sources: tuple[str, ...] = tuple(sources or ["<given>"] * len(self.domains))
        self._tasks: dict[str, tuple[Domain, Task]] = {}
        for domain, source in zip(self.domains, self.sources):
            for task in domain.tasks:
                if task.name in self._tasks:
                    other = self._tasks[task.name][0]
                    raise DomainError(
                        f"task type {task.name!r} is declared by two domains: {other.name!r} and {domain.name!r} ({source}); "
                        "rename one of them")
                self._tasks[task.name] = (domain, task)

    def __repr__(self) -> str:
        return f"Domains({[d.name for d in self.domains]})"

    @property
    def names(self) -> list[str]:
        """The domains' names, in load order."""
        return [d.name for d in self.domains]

    def get(self, name: str) -> Domain:
        for d in self.domains:
            if d.name == name:
                return d
        raise KeyError(f"no domain {name!r}; loaded: {self.names}")

    def task_types(self) -> tuple[TaskType, ...]:
        """Every domain's task types, in load order: the taxonomy."""
        return tuple(task.type for _, task in self._tasks.values())

    def task(self, task_type: str | None) -> Task | None:
        found = self._tasks.get(task_type or "")
        return found[1] if found else None

    def domain_of(self, task_type: str | None) -> Domain | None:
        found = self._tasks.get(task_type or "")
        return found[0] if found else None

    def verifier(self, task_type: str | None) -> Verifier | GenericChecks | None:
        task = self.task(task_type)
        return task.verifier if task else None

    def output_schema(self, task_type: str | None, messages: list[dict]) -> Mapping[str, Any] | None:
        """The JSON Schema an answer to `messages` must follow, where the task type has one."""
        task = self.task(task_type)
        return task.schema_for(messages) if task else None

    def target(self, task_type: str | None, answer: str) -> str | None:
        """The training-target form of `answer` (None: the task type has none, or the
        answer holds nothing of that form)."""
        task = self.task(task_type)
        return task.target(answer) if task and task.target else None

    def examples(self) -> dict[str, list[Example]]:
        """The teacher's few-shot pool: examples per task type."""
        return {name: list(task.examples) for name, (_, task) in self._tasks.items() if task.examples}

    def task_for_tools(self, tools) -> Task | None:
        """The tool-calling task type whose tool set offers every function of `tools` (OpenAI
        ``tools`` of a request), the smallest such set; None when no domain declares one."""
        names = {t.get("function", {}).get("name") for t in tools or () if isinstance(t, Mapping)}
        if not names:
            return None
        fits = [task for _, task in self._tasks.values()
                if task.tools and names <= {t["function"]["name"] for t in task.tools}]
        return min(fits, key=lambda t: len(t.tools)) if fits else None

    def rubric(self, task_type: str | None) -> str | None:
        """The judge's rubric of the task type's domain (None: unknown type, or no rubric)."""
        domain = self.domain_of(task_type)
        return domain.rubric if domain else None


def _resolve(obj: Any, label: str) -> Domain:
    if not isinstance(obj, Domain) and callable(obj) and not isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:  # noqa: BLE001 - a plugin's factory failing is reported, whatever it raised
            raise DomainError(f"domain plugin {label}: its factory failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, Domain):
        raise DomainError(f"domain plugin {label}: got {type(obj).__name__}, expected a flywheel.domains.Domain "
                          "(or a function returning one)")
    problems = obj.problems()
    if problems:
        raise DomainError(f"domain plugin {label} (domain {obj.name!r}): " + "; ".join(problems))
    return obj


def _import(ref: str, label: str) -> Any:
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name.strip() or not attr.strip():
        raise DomainError(f"domain plugin {label}: {ref!r} must be 'package.module:attribute'")
    try:
        obj: Any = importlib.import_module(module_name.strip())
    except Exception as exc:  # noqa: BLE001 - any import failure of a plugin is reported with its name
        raise DomainError(f"domain plugin {label}: cannot import {module_name.strip()!r}: {type(exc).__name__}: {exc}") from exc
    for part in attr.strip().split("."):
        if not hasattr(obj, part):
            raise DomainError(f"domain plugin {label}: module {module_name.strip()!r} has no attribute {attr.strip()!r}")
        obj = getattr(obj, part)
    return obj


def _entry_points() -> list[metadata.EntryPoint]:
    """The group's entry points of every distribution on the path. Not only of the first
    copy of each (as `metadata.entry_points` does): a stale ``*.egg-info`` left in a
    checkout would hide an editable install's fresh metadata."""
    found: dict[tuple[str, str], metadata.EntryPoint] = {}
    for dist in metadata.distributions():
        for ep in dist.entry_points.select(group=ENTRY_POINT_GROUP):
            found.setdefault((ep.name, ep.value), ep)
    return sorted(found.values(), key=lambda ep: (ep.name, ep.value))


def load_domains(modules: Iterable[str] = (), *, entry_points: bool = True) -> Domains:
    """The installed domain plugins (entry-point group ``flywheel.domains``, by name) and
    then those of `modules` (``"package.module:attribute"``, in order). The same domain
    reached twice counts once; two domains declaring one task type are an error."""
    domains: list[Domain] = []
    sources: list[str] = []

    def add(domain: Domain, source: str) -> None:
        if any(d is domain for d in domains):
            return
        for d, s in zip(domains, sources):
            if d.name == domain.name:
                raise DomainError(f"two domains are called {domain.name!r}: {s} and {source}")
        domains.append(domain)
        sources.append(source)

    if entry_points:
        eps = _entry_points()
        if not eps:
            raise DomainError(
                f"no domain plugins are registered in the entry-point group {ENTRY_POINT_GROUP!r}, not even Flywheel's "
                "own: reinstall the package (pip install -e .) so its entry points are recorded")
        for ep in eps:
            dist = getattr(ep, "dist", None)
            label = f"{ep.name!r} (entry point {ep.value!r}" + (f" of {dist.name}" if dist is not None else "") + ")"
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure of a plugin is reported with its name
                raise DomainError(f"domain plugin {label}: cannot load it: {type(exc).__name__}: {exc}") from exc
            add(_resolve(obj, label), f"entry point {ep.name!r}")
    for ref in modules:
        label = f"{ref!r} (settings domains.modules)"
        add(_resolve(_import(str(ref), label), label), f"settings module {ref!r}")
    return Domains(domains, sources)


_lock = threading.Lock()
_modules: tuple[str, ...] = ()
_active: Domains | None = None


def configure_domains(modules: Iterable[str], *, reload: bool = False) -> None:
    """Set the extra domain modules of this process (``settings.domains.modules``); the
    registry is (re)loaded on its next use when they changed, or with `reload` (after a
    plugin was installed into the running process)."""
    global _modules, _active
    modules = tuple(modules)
    with _lock:
        if reload or modules != _modules:
            _modules, _active = modules, None


def active_domains() -> Domains:
    """This process's domains: the installed plugins plus the configured modules, loaded
    once on first use."""
    global _active
    with _lock:
        if _active is None:
            _active = load_domains(_modules)
        return _active


def domains_for(settings) -> Domains:
    """`active_domains` with the modules of ``settings.domains.modules``."""
    section = getattr(settings, "domains", None)
    configure_domains(tuple(getattr(section, "modules", ()) or ()))
    return active_domains()
