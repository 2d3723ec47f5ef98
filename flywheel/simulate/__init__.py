"""Traffic simulator for the demo domain (an analytics assistant).

Simulated users with personas send seeded, reproducible sessions through the gateway with
the official `openai` client and post feedback; a JSONL manifest keeps the ground truth.
The simulator is a client of the chart domain (`flywheel.domains.chart`); no product code
imports it.

- `charts`: the product's datasets (traffic and held-out), chart requests and their truth
- `tasks`: the task mix (chart configs, summaries, rewrites, math, concepts, chit-chat)
- `messy`: typos, mixed languages, half sentences, lowercase
- `users`: personas and their feedback decisions
- `sessions`: per-session plans from per-session random generators
- `synthetic`: the same sessions as events, without a gateway (tests, benchmarks)
- `run`: `run_simulation`, the concurrent driver
"""

from __future__ import annotations

from flywheel.simulate.run import SimulationReport, run_simulation
from flywheel.simulate.sessions import SimulationConfig
from flywheel.simulate.users import Behaviour

__all__ = ["Behaviour", "SimulationConfig", "SimulationReport", "run_simulation"]
