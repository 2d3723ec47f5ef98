"""Task types: a two-level taxonomy (``group/name``) and a nearest-seeds classifier.

The taxonomy is the task types of the loaded domains (`flywheel.domains`: each domain
declares its types), or a YAML file that replaces them (``curation.taxonomy_path``):
each type has a description, seed examples (what users type) and a relative selection
weight (hard types get more of the selection budget). A text is classified by its
similarity to each type's seeds in MiniLM space: a type's score is the mean of its
``top_k`` best seed similarities; the confidence is the softmax probability of the best
type against the others (so a close second lowers it), scaled down further when even the
best type is far (``min_similarity``). Below ``threshold`` the type is ``unknown``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from flywheel.domains import DomainError, Domains, TaskType, active_domains
from flywheel.domains.files import read_task_types, task_types_from_data
from training.errors import TrainingError

__all__ = [
    "UNKNOWN",
    "Classification",
    "TaskClassifier",
    "TaskType",
    "Taxonomy",
    "TaxonomyError",
]

UNKNOWN = "unknown"


class TaxonomyError(TrainingError):
    """The task types cannot be loaded: a taxonomy YAML is missing or malformed, a type lacks a
    description or seeds, or a domain plugin is broken."""


@dataclass(frozen=True)
class Taxonomy:
    types: tuple[TaskType, ...]
    source: str = ""

    @classmethod
    def load(cls, path: str | Path | None = None, *, domains: Domains | None = None) -> "Taxonomy":
        """The task types of `domains` (default: this process's, `active_domains`), or,
        with `path`, those of a taxonomy YAML that replaces them."""
        if path is None:
            try:
                loaded = domains or active_domains()
            except DomainError as exc:
                raise TaxonomyError(str(exc)) from exc
            return cls(loaded.task_types(), source="domains: " + ", ".join(loaded.names))
        try:
            return cls(read_task_types(path), str(path))
        except DomainError as exc:
            raise TaxonomyError(str(exc)) from exc

    @classmethod
    def from_dict(cls, data, source: str = "<dict>") -> "Taxonomy":
        """Build from ``{"groups": {group: {"types": {name: {description, seeds, weight}}}}}``."""
        try:
            return cls(task_types_from_data(data, source), source)
        except DomainError as exc:
            raise TaxonomyError(str(exc)) from exc

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.types]

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def get(self, name: str) -> TaskType:
        for t in self.types:
            if t.name == name:
                return t
        raise KeyError(f"unknown task type {name!r}; known: {self.names}")

    def weights(self) -> dict[str, float]:
        """Relative selection budgets per type (for ``select.select_by_budget``)."""
        return {t.name: t.weight for t in self.types}


@dataclass(frozen=True)
class Classification:
    task_type: str
    confidence: float
    scores: dict[str, float] = field(default_factory=dict, compare=False, repr=False)


class TaskClassifier:
    """Nearest-seeds classifier over a taxonomy.

    ``threshold``: minimum confidence for a type (else ``unknown``); ``top_k``: how many of
    a type's best seed similarities are averaged; ``temperature``: softmax temperature
    over type scores (smaller: sharper); ``min_similarity``: a best-type score below it
    scales the confidence down in proportion (text unlike any seed)."""

    def __init__(
        self,
        taxonomy: Taxonomy,
        embedder,
        threshold: float = 0.35,
        *,
        top_k: int = 3,
        temperature: float = 0.03,
        min_similarity: float = 0.3,
    ):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {threshold}")
        self.taxonomy = taxonomy
        self.embedder = embedder
        self.threshold = float(threshold)
        self.top_k = int(top_k)
        self.temperature = float(temperature)
        self.min_similarity = float(min_similarity)
        seeds, owner = [], []
        for i, t in enumerate(taxonomy.types):
            # The description counts as one more seed: it names the type in plain words.
            for text in (*t.seeds, t.description):
                seeds.append(text)
                owner.append(i)
        self._seed_vectors = embedder.encode(seeds)
        self._owner = np.asarray(owner)

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Type scores, shape (n, n_types): the mean of each type's ``top_k`` best seed
        similarities."""
        sims = np.asarray(embeddings, dtype=np.float32) @ self._seed_vectors.T
        out = np.empty((sims.shape[0], len(self.taxonomy.types)), dtype=np.float32)
        for i in range(len(self.taxonomy.types)):
            block = sims[:, self._owner == i]
            k = min(self.top_k, block.shape[1])
            top = np.partition(block, block.shape[1] - k, axis=1)[:, -k:]
            out[:, i] = top.mean(axis=1)
        return out

    def classify(self, texts: Sequence[str], embeddings: np.ndarray | None = None) -> list[Classification]:
        """One :class:`Classification` per text (``embeddings``: precomputed, normalised
        vectors of the same texts, to save encoding them again)."""
        if embeddings is None:
            embeddings = self.embedder.encode(list(texts))
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.shape[0] != len(texts):
            raise ValueError(f"{len(texts)} texts but {embeddings.shape[0]} embeddings")
        if embeddings.shape[0] == 0:
            return []
        scores = self.scores(embeddings)
        # A request followed by material ("Summarize this:\n\n<paragraph>") is typed by
        # its request: the material would otherwise dominate the embedding. Such texts
        # also get the scores of their first paragraph, and each type keeps the higher.
        heads = {i: h for i, h in enumerate(_head(t) for t in texts) if h}
        if heads:
            idx = list(heads)
            head_scores = self.scores(self.embedder.encode([heads[i] for i in idx]))
            scores[idx] = np.maximum(scores[idx], head_scores)
        z = (scores - scores.max(axis=1, keepdims=True)) / self.temperature
        prob = np.exp(z)
        prob /= prob.sum(axis=1, keepdims=True)
        best = scores.argmax(axis=1)
        names = self.taxonomy.names
        out = []
        for row, b in enumerate(best):
            top = float(scores[row, b])
            confidence = float(prob[row, b]) * min(1.0, max(0.0, top) / self.min_similarity)
            name = names[b] if confidence >= self.threshold else UNKNOWN
            out.append(Classification(name, round(confidence, 4), dict(zip(names, scores[row].round(4).tolist()))))
        return out


def _head(text: str, max_chars: int = 300) -> str | None:
    """The first paragraph of a text that has more after a blank line, else None."""
    head, sep, rest = (text or "").strip().partition("\n\n")
    if not sep or not rest.strip() or len(head) > max_chars:
        return None
    return head.strip()


def teacher_labels(client, taxonomy: "Taxonomy", texts: Sequence[str]) -> list[str | None]:
    """Ask a teacher model (a ``training.chat_client.ChatClient``) for the task type of each
    text the classifier left ``unknown``: it sees every type with its description and must
    answer with one name. Answers that name no type of the taxonomy give None (the text
    stays ``unknown``)."""
    names = {t.name: t for t in taxonomy.types}
    menu = "\n".join(f"- {t.name}: {t.description}" for t in taxonomy.types)
    out: list[str | None] = []
    for text in texts:
        messages = [
            {"role": "system", "content": "You label chat requests with a task type. Answer with the type name only."},
            {"role": "user", "content": f"Task types:\n{menu}\n\nRequest:\n{text[:2000]}\n\nTask type:"},
        ]
        reply = (client.chat(messages, max_tokens=16).texts or [""])[0].strip().strip("`'\".").lower()
        out.append(reply if reply in names else next((n for n in names if n in reply), None))
    return out
