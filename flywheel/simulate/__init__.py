"""Traffic simulator for the demo domain (an analytics assistant).

Simulated users with personas send seeded, reproducible sessions through the gateway with
the official `openai` client and post feedback; a JSONL manifest keeps the ground truth.

- `charts`: chart-config requests, their ground truth, the prompt, the verifier
- `tasks`: the task mix (chart configs, summaries, rewrites, math, concepts, chit-chat)
- `messy`: typos, mixed languages, half sentences, lowercase
- `users`: personas and their feedback decisions
- `sessions`: per-session plans from per-session random generators
- `run`: `run_simulation`, the concurrent driver
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flywheel.simulate.sessions import SimulationConfig
from flywheel.simulate.users import Behaviour

if TYPE_CHECKING:
    from flywheel.simulate.run import SimulationReport, run_simulation

__all__ = ["Behaviour", "SimulationConfig", "SimulationReport", "run_simulation"]


def __getattr__(name: str) -> Any:
    # `run` imports openai; the verifier in `charts` should not need it.
    if name in ("run_simulation", "SimulationReport"):
        from flywheel.simulate import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
