"""`flywheel up` end to end: embedded broker, control plane, gunicorn gateway as real
processes; `flywheel status` reads them; SIGTERM drains everything before stopping.

The scripted backend stands in for the model here (the model paths have their own tests),
so this runs in seconds."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys

import httpx
import openai

from streams.broker import port_open
from tests.conftest import REPO, count, free_port, query, wait_for


def test_up_status_and_sigterm_drains_everything(tmp_path):
    data = tmp_path / "data"
    env = {
        **os.environ,
        "FLYWHEEL_DATA_DIR": str(data),
        "FLYWHEEL_MODEL__BACKEND": "scripted",
        "FLYWHEEL_KAFKA__EMBEDDED_PORT": str(free_port()),
        "FLYWHEEL_GATEWAY__PORT": str(free_port()),
        "FLYWHEEL_CONTROL__PORT": str(free_port()),
    }
    gateway = f"http://127.0.0.1:{env['FLYWHEEL_GATEWAY__PORT']}"
    up = subprocess.Popen([sys.executable, "-m", "flywheel", "up"], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def ready():
            try:
                return httpx.get(gateway + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=120, what="the stack to come up")
        keys = json.loads((data / "dev_api_keys.json").read_text())
        assert keys["chat"].startswith("fw-chat-") and keys["ingest"].startswith("fw-ingest-")
        assert keys["chat"] not in (data / "api_keys.json").read_text()  # only hashes are stored
        assert stat.S_IMODE((data / "user_salt").stat().st_mode) == 0o600  # the local setup's own pseudonym salt
        client = openai.OpenAI(base_url=gateway + "/v1", api_key=keys["chat"], max_retries=0)
        ids = []
        for i in range(50):
            r = client.chat.completions.create(model="flywheel-chat", messages=[{"role": "user", "content": f"q{i}"}])
            ids.append(r.id)
            client.post("/feedback", body={"request_id": r.id, "kind": "thumb", "value": 1}, cast_to=httpx.Response)

        status = subprocess.run([sys.executable, "-m", "flywheel", "status", "--json"], env=env, cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        st = json.loads(status.stdout)
        assert st["source"] == "control-plane"
        assert st["gateway"]["reachable"] and st["gateway"]["spool_depth"] is not None
        assert st["landing_lag_events"] is not None and st["landing_lag_events"] >= 0
        assert set(st["tables"]) >= {"interactions", "feedback", "dead_letters", "live_metrics"}

        # The stream worker's live windows reach the control plane (flush every 5 s).
        def live():
            shown = subprocess.run([sys.executable, "-m", "flywheel", "metrics", "--json"], env=env, cwd=REPO,
                                   capture_output=True, text=True, timeout=60)
            assert shown.returncode == 0, shown.stderr
            return sum(w["requests"] for w in json.loads(shown.stdout)) == 50

        wait_for(live, timeout=60, interval=1, what="the live metrics of the 50 requests")

        # Stop at once: whatever was produced must be landed before the broker goes.
        up.send_signal(signal.SIGTERM)
        out, _ = up.communicate(timeout=180)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert up.returncode == 0, out
    assert "stopped." in out
    db = data / "flywheel.duckdb"
    assert count(db, "interactions") == 50
    assert count(db, "feedback") == 50
    assert count(db, "feedback f JOIN interactions i USING (request_id)") == 50
    # The stream worker published every thumb before it stopped (its last flush on SIGTERM).
    assert query(db, "SELECT sum(requests), sum(thumbs_up) FROM live_metrics")[0] == (50, 50)
    # No process of the stack outlived it: every port it listened on is closed.
    for key in ("FLYWHEEL_KAFKA__EMBEDDED_PORT", "FLYWHEEL_GATEWAY__PORT", "FLYWHEEL_CONTROL__PORT"):
        assert not port_open("127.0.0.1", int(env[key])), key
