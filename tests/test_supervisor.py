"""The supervisor stops a child together with what the child started (the control plane's
training job is a grandchild of `flywheel up`): Ctrl-C must leave nothing running."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from flywheel.supervisor import Child, Supervisor

# A child that starts a grandchild (as the control plane starts `flywheel train`) and, like a
# server without a SIGTERM handler, dies at once on SIGTERM, orphaning it if only it is signalled.
_PARENT = """
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(str(grandchild.pid))
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie waiting to be reaped has stopped


def test_stop_takes_the_childs_own_children_with_it(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    sup = Supervisor(tmp_path / "logs")
    child = sup.start(Child("parent", [sys.executable, "-c", _PARENT, str(pid_file)],
                            ready=lambda: pid_file.exists() and pid_file.read_text() != "", stop_timeout=10),
                      timeout=60)
    grandchild = int(pid_file.read_text())
    assert _alive(grandchild) and _alive(child.proc.pid)
    sup.stop_all()
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(grandchild)
    if alive:  # do not leave it behind whatever the verdict
        os.kill(grandchild, 9)
    assert not alive, "the grandchild outlived its supervised parent"
