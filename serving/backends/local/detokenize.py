"""Token ids to streamed text: incremental detokenisation and stop strings.

Rows are streamed a token at a time, so text is produced incrementally. Decoding only the
new id does not work (byte-level BPE splits a character over several ids, and a token's
text can depend on its neighbours), and decoding everything each step costs O(n) per
token. :meth:`TextTail.new_text` decodes a small window behind the last id and holds back
an incomplete UTF-8 sequence until later ids complete it.

Stop strings can span pieces, and what was sent to the client cannot be taken back, so
:meth:`TextTail.advance` holds back a tail of the text that could still become a stop
string and cuts the text at the earliest stop hit.

Everything here works on a :class:`~serving.backends.local.rows.Row` (its ``ids``,
offsets, ``text``, ``emitted`` and ``params.stop``) and runs on the worker thread.
"""

from __future__ import annotations

from collections.abc import Callable

from serving.backends.local.rows import Row


class TextTail:
    """Incremental detokenisation and stop-string handling (pure functions on a row)."""

    def __init__(self, decode: Callable[[list[int]], str]):
        self._decode = decode

    @classmethod
    def for_tokenizer(cls, tokenizer) -> TextTail:
        """Decode with a copy of ``tokenizer``'s Rust tokenizer: the worker has its own,
        because a fast tokenizer must not be used from two threads at once (request threads
        encode prompts with the original)."""
        from tokenizers import Tokenizer

        decoder = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        return cls(lambda ids: decoder.decode(ids, skip_special_tokens=True))

    def new_text(self, row: Row) -> str:
        """Text added by the last id: decode a small window and hold back an incomplete
        UTF-8 sequence (``"\ufffd"`` at the end) until later ids complete it."""
        ids = row.ids
        prefix = self._decode(ids[row.prefix_offset : row.read_offset])
        full = self._decode(ids[row.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            row.prefix_offset, row.read_offset = row.read_offset, len(ids)
            return full[len(prefix) :]
        return ""

    def flush(self, row: Row) -> str:
        prefix = self._decode(row.ids[row.prefix_offset : row.read_offset])
        full = self._decode(row.ids[row.prefix_offset :])
        row.prefix_offset = row.read_offset = len(row.ids)
        return full[len(prefix) :] if len(full) > len(prefix) else ""

    @staticmethod
    def advance(row: Row, piece: str, final: bool) -> tuple[str, bool]:
        """Add ``piece`` to the row's text; return ``(text to emit now, stop string hit)``."""
        stops = row.params.stop
        old_len = len(row.text)
        row.text += piece
        text = row.text
        if stops:
            longest = max(len(s) for s in stops)
            search_from = max(0, old_len - longest + 1)  # a new hit ends in ``piece``
            hit = -1
            for s in stops:
                if s:
                    p = text.find(s, search_from)
                    if p != -1 and (hit == -1 or p < hit):
                        hit = p
            if hit != -1:
                out = text[row.emitted : hit]
                row.text = text[:hit]
                row.emitted = hit
                return out, True
            if not final:
                # Hold back a tail that could still become a stop string.
                hold = 0
                for k in range(min(longest - 1, len(text) - row.emitted), 0, -1):
                    tail = text[-k:]
                    if any(s.startswith(tail) for s in stops):
                        hold = k
                        break
                end = len(text) - hold
                out = text[row.emitted : end]
                row.emitted = end
                return out, False
        out = text[row.emitted :]
        row.emitted = len(text)
        return out, False


__all__ = ["TextTail"]
