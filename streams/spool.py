"""An append-only on-disk spool: the write-ahead log between the request path and Kafka.

Request threads append records (a file write, no network); one sender thread reads them
back in order, sends them to Kafka and, once the broker has acknowledged them, moves the
cursor past them. So a broker outage, a slow broker or a gateway restart never loses an
event and never blocks a request: the spool simply grows, and drains, in order, when the
broker returns. Delivery is at-least-once; landing is idempotent on ``event_id``.

Layout: ``seg-000000000001.log``... segment files of lines ``["topic","key"]\\t<value>\\n``
(values are compact JSON, which never holds a raw tab or newline) and a ``cursor`` file
``{"segment": n, "offset": bytes}``, replaced atomically. Fully sent segments are deleted.

``read`` looks ``read_bytes`` ahead at a time; a line longer than that is read whole on
its own, and a line that cannot be parsed comes back with ``error`` set, so neither can
stall the records behind it: the sender moves such records aside (dead-letter file).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from flywheel.errors import FlywheelError


class SpoolFull(FlywheelError):
    """The spool reached its bound: the broker has been unreachable for too long."""


class Reservation:
    """Room held in the spool for a record not written yet (a chat answer's interaction, so
    that an answered request is never left without room to record it). Writing the record
    with ``append(..., reservation=)`` uses it up; ``release`` gives it back (idempotent)."""

    def __init__(self, spool: "Spool", nbytes: int):
        self._spool = spool
        self.nbytes = nbytes
        self.held = True

    def release(self) -> None:
        self._spool._release(self)


@dataclass(frozen=True)
class SpoolRecord:
    topic: str
    key: bytes | None
    value: bytes
    segment: int  # position just after this record, for commit()
    end: int
    size: int  # bytes of its line
    error: str | None = None  # set when the line could not be parsed (``value`` is then the raw line)


#: How far one read() looks ahead in a segment (a longer line is read whole on its own).
READ_BYTES = 4 * 1024 * 1024


def _seg_name(n: int) -> str:
    return f"seg-{n:012d}.log"


class Spool:
    def __init__(self, path: Path, *, max_bytes: int, segment_bytes: int, fsync: bool = False,
                 read_bytes: int = READ_BYTES):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.read_bytes = read_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self._lock = threading.Lock()
        self._cursor = self._read_cursor()
        segments = self._segments()
        self._repair_tail(segments)
        self._write_seg = segments[-1] if segments else max(self._cursor[0], 1)
        self._file = open(self.path / _seg_name(self._write_seg), "ab")
        # Depth in bytes and records between the cursor and the end.
        self._bytes, self._records = self._measure()
        self._reserved = 0  # bytes held by reservations (count against max_bytes)

    # -- state on disk -------------------------------------------------------------
    def _segments(self) -> list[int]:
        return sorted(int(p.name[4:16]) for p in self.path.glob("seg-*.log"))

    def _read_cursor(self) -> tuple[int, int]:
        try:
            data = json.loads((self.path / "cursor").read_text())
            return int(data["segment"]), int(data["offset"])
        except FileNotFoundError:
            return (1, 0)

    def _repair_tail(self, segments: list[int]) -> None:
        # A crash in the middle of an append leaves a partial last line; its request never
        # got an answer, so dropping that fragment loses nothing that was acknowledged.
        if not segments:
            return
        last = self.path / _seg_name(segments[-1])
        data = last.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(last, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def _measure(self) -> tuple[int, int]:
        seg0, off0 = self._cursor
        nbytes = nrec = 0
        for seg in self._segments():
            if seg < seg0:
                continue
            with open(self.path / _seg_name(seg), "rb") as f:
                if seg == seg0:
                    f.seek(off0)
                data = f.read()
            nbytes += len(data)
            nrec += data.count(b"\n")
        return nbytes, nrec

    # -- request side --------------------------------------------------------------
    def reserve(self, nbytes: int) -> Reservation:
        """Hold ``nbytes`` for a later append; SpoolFull when they do not fit."""
        with self._lock:
            if self._bytes + self._reserved + nbytes > self.max_bytes:
                raise SpoolFull(self._full_message())
            self._reserved += nbytes
        return Reservation(self, nbytes)

    def _release(self, reservation: Reservation) -> None:
        with self._lock:
            if reservation.held:
                reservation.held = False
                self._reserved -= reservation.nbytes

    def _full_message(self) -> str:
        return (f"event spool is full ({self._bytes} of {self.max_bytes} bytes, {self._reserved} more held for answers "
                "in flight): the Kafka broker has been unreachable too long; retry later or raise spool.max_bytes")

    def append(self, records: list[tuple[str, bytes | None, bytes]], reservation: Reservation | None = None) -> None:
        """Append records (topic, key, value) atomically with respect to other appends.
        Raises SpoolFull when the bound would be exceeded; ``reservation`` (used up either
        way) is room held for them."""
        lines = []
        for topic, key, value in records:
            header = json.dumps([topic, key.decode() if key is not None else None], ensure_ascii=False)
            lines.append(header.encode() + b"\t" + value + b"\n")
        blob = b"".join(lines)
        with self._lock:
            if reservation is not None and reservation.held:
                reservation.held = False
                self._reserved -= reservation.nbytes
            if self._bytes + self._reserved + len(blob) > self.max_bytes:
                raise SpoolFull(self._full_message())
            if self._file.tell() >= self.segment_bytes:
                self._file.close()
                self._write_seg += 1
                self._file = open(self.path / _seg_name(self._write_seg), "ab")
            self._file.write(blob)
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
            self._bytes += len(blob)
            self._records += len(lines)

    # -- sender side ---------------------------------------------------------------
    def read(self, max_records: int) -> list[SpoolRecord]:
        """The next records after the cursor, in append order (does not move the cursor)."""
        out: list[SpoolRecord] = []
        seg, off = self._cursor
        with self._lock:
            write_seg = self._write_seg
        while len(out) < max_records and seg <= write_seg:
            path = self.path / _seg_name(seg)
            try:
                with open(path, "rb") as f:
                    f.seek(off)
                    data = f.read(self.read_bytes)
                    complete = data[: data.rfind(b"\n") + 1]
                    if not complete and len(data) == self.read_bytes:
                        complete = self._long_line(f, data)  # b"" while it is still being written
                        data = complete or data
            except FileNotFoundError:
                data = complete = b""
            pos = off
            for line in complete.splitlines(keepends=True):
                pos += len(line)
                out.append(_parse(line, seg, pos))
                if len(out) >= max_records:
                    break
            if len(out) >= max_records or seg == write_seg:
                break
            if len(complete) < len(data) or len(data) >= self.read_bytes:
                break  # more of this segment to read next time
            seg, off = seg + 1, 0
        return out

    def _long_line(self, f, head: bytes) -> bytes:
        """The rest of a line longer than the read window (``f`` is positioned after ``head``),
        with its newline; b"" if no newline follows yet."""
        parts = [head]
        while True:
            chunk = f.read(self.read_bytes)
            if not chunk:
                return b""
            end = chunk.find(b"\n")
            if end >= 0:
                parts.append(chunk[: end + 1])
                return b"".join(parts)
            parts.append(chunk)

    def commit(self, sent: list[SpoolRecord]) -> None:
        """Move the cursor past ``sent``, a prefix of what read() returned, now acknowledged."""
        if not sent:
            return
        record = sent[-1]
        count, nbytes = len(sent), sum(r.size for r in sent)
        tmp = self.path / "cursor.tmp"
        tmp.write_text(json.dumps({"segment": record.segment, "offset": record.end}))
        os.replace(tmp, self.path / "cursor")
        old_seg = self._cursor[0]
        self._cursor = (record.segment, record.end)
        with self._lock:
            self._bytes -= nbytes
            self._records -= count
            write_seg = self._write_seg
        for seg in range(old_seg, record.segment):
            if seg < write_seg:
                (self.path / _seg_name(seg)).unlink(missing_ok=True)

    # -- metrics -------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return self._records

    @property
    def depth_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _parse(line: bytes, seg: int, end: int) -> SpoolRecord:
    """One spool line as a record; an unreadable line comes back whole, with ``error`` set."""
    header, _, value = line.rstrip(b"\n").partition(b"\t")
    try:
        topic, key = json.loads(header)
        if not isinstance(topic, str) or not (key is None or isinstance(key, str)):
            raise ValueError("the header is not [topic, key]")
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return SpoolRecord("", None, line.rstrip(b"\n"), seg, end, len(line), error=f"unreadable spool line: {e}")
    return SpoolRecord(topic, key.encode() if key is not None else None, value, seg, end, len(line))
