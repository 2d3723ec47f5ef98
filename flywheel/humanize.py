"""Small formatting helpers shared by the CLI and the console (the lowest layer, so both
can use them)."""

from __future__ import annotations


def format_duration(seconds: float | None) -> str:
    """1.2s, 3m05s, 1h02m: a stage's time at a glance (the CLI and the console)."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"
