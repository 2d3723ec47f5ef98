"""The gateway's latency while a training job runs on the same machine, against idle, in
the same run (issue 11: "serving stays usable while a turn trains").

The gateway runs as in production (`flywheel gateway`: gunicorn, the local backend with
the bundled model, the real broker). A few closed-loop clients send short chat requests
(greedy, --max-tokens) one after another through it:

  idle      --seconds of requests with nothing else running (before and again after the
            training phases: the ratios are to the mean of both, against drift on a shared machine);
  training  requests for as long as a real `flywheel train` runs (SFT on a small simulated
            chart-config snapshot, --train-steps steps, no registration), the job bounded
            as the settings say (training.threads, training.nice: --threads/--nice);
  unbounded (with --unbounded) the same job with every core and normal priority, i.e.
            what the job did before these settings: the baseline of the lever.

Latency is the wall time of one request; a request that fails or takes longer than
--timeout counts as an error. Prints one JSON line: p50/p95 per phase and the ratios to
idle (figures only; nothing is asserted). Run it with CUDA_VISIBLE_DEVICES= on a GPU host
(the point is CPU sharing), or under `taskset -c 0,1` to play the 2-core machine.

    python bench/serving_during_turn.py [--clients 3] [--seconds 40] [--max-tokens 16] [--train-steps 8]
                                        [--threads 0] [--nice 10] [--unbounded] [--gateway-threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

from _stack import REPO, broker_and_settings, emit, env_of, gateway, percentile

QUESTIONS = ["Say hello to {x}.", "What is {x}?", "Name one fact about {x}.", "Give {x} a short title.",
             "Is {x} a colour?", "Spell {x} backwards."]
THINGS = ["Paris", "a bicycle", "the moon", "bread", "a spreadsheet", "chess", "rain", "a train", "paper", "bees"]


def _snapshot(folder, n: int) -> str:
    """A small simulated dataset: chart-config requests in the app's prompt with their answers."""
    from flywheel.domains.chart import CHART_TASK
    from flywheel.domains.chart.prompt import build_prompt
    from flywheel.domains.chart.score import dump_config
    from flywheel.simulate.charts import generate_request
    from training.datasets.snapshot import write_snapshot

    rng = random.Random(0)
    records = []
    for i in range(n):
        req = generate_request(rng)
        records.append({"messages": [{"role": "user", "content": build_prompt(req.schema, req.text)},
                                     {"role": "assistant", "content": dump_config(req.truth)}],
                        "task_type": CHART_TASK, "weight": 1.0, "source_ids": [f"bench-{i}"]})
    write_snapshot(folder, version=folder.name, sft=records[2:], eval=records[:2])
    return folder.name


class Clients:
    """Closed-loop clients: each sends its next request when the last one answers."""

    def __init__(self, port: int, token: str, n: int, max_tokens: int, timeout: float):
        self.port, self.token, self.n, self.max_tokens, self.timeout = port, token, n, max_tokens, timeout
        self.rng = random.Random(1)

    def ask(self) -> float | None:
        body = json.dumps({"model": "flywheel-chat", "temperature": 0, "max_tokens": self.max_tokens,
                           "messages": [{"role": "user", "content": self.rng.choice(QUESTIONS).format(
                               x=self.rng.choice(THINGS))}]})
        t0 = time.perf_counter()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json",
                                                               "Authorization": f"Bearer {self.token}"})
            resp = conn.getresponse()
            resp.read()
            conn.close()
        except OSError:
            return None
        return time.perf_counter() - t0 if resp.status == 200 else None

    def run(self, until) -> dict:
        """Send requests until ``until()`` is true; latency figures of what was sent."""
        latencies: list[float] = []
        errors = [0]
        lock = threading.Lock()

        def client() -> None:
            while not until():
                took = self.ask()
                with lock:
                    if took is None:
                        errors[0] += 1
                    else:
                        latencies.append(took)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(self.n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        return {"requests": len(latencies), "errors": errors[0], "seconds": round(wall, 1),
                "p50_s": round(percentile(latencies, 0.5), 3), "p95_s": round(percentile(latencies, 0.95), 3),
                "max_s": round(max(latencies, default=float("nan")), 3),
                "requests_per_s": round(len(latencies) / wall, 2)}


def train_phase(s, clients: Clients, dataset: str, run_id: str, steps: int, threads: int, nice: int,
                limit_s: float) -> dict:
    """Requests for as long as a real `flywheel train` runs (bounded as given)."""
    from training.job_limits import thread_env

    env = {**env_of(s), **thread_env(threads), "PYTHONPATH": str(REPO), "FLYWHEEL_TRAINING__THREADS": str(threads),
           "FLYWHEEL_TRAINING__NICE": str(nice), "FLYWHEEL_TRAINING__DPO": "false"}
    cmd = [sys.executable, "-m", "flywheel", "train", "--dataset", dataset, "--run-id", run_id, "--no-register",
           "--set", f"sft.args.max_steps={steps}", "--set", "sft.args.per_device_train_batch_size=2",
           "--set", "sft.args.max_length=768", "--set", "sft.args.eval_steps=100000",
           "--set", "sft.args.save_steps=100000"]
    log = (s.data_path / f"{run_id}.log").open("wb")
    t0 = time.perf_counter()
    # Its own process group: the CLI and the job process it starts stop together at the limit.
    job = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + limit_s
    try:
        figures = clients.run(lambda: job.poll() is not None or time.monotonic() > deadline)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        log.close()
    run_file = s.runs_path / run_id / "run.json"
    run = json.loads(run_file.read_text()) if run_file.is_file() else {}
    log_text = (s.data_path / f"{run_id}.log").read_text(errors="replace")
    sft = log_text.rfind("[training] SFT")  # its progress bar's latest "n/N [" (not the weight loading's)
    bars = re.findall(r"(\d+)/(\d+) \[", log_text[sft:]) if sft >= 0 else []
    figures.update(job_finished=run.get("status") == "done", job_s=round(time.perf_counter() - t0, 1),
                   job_steps_done=int(bars[-1][0]) if bars else 0, job_threads=threads, job_nice=nice)
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=3, help="closed-loop clients")
    ap.add_argument("--seconds", type=float, default=40, help="length of the idle phase")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--train-steps", type=int, default=8, help="SFT steps of the training job")
    ap.add_argument("--records", type=int, default=40, help="records in the simulated snapshot")
    ap.add_argument("--threads", type=int, default=0, help="training.threads of the job (0: the cores less one)")
    ap.add_argument("--nice", type=int, default=10, help="training.nice of the job")
    ap.add_argument("--unbounded", action="store_true",
                    help="also measure the job with every core at normal priority (the baseline)")
    ap.add_argument("--gateway-threads", type=int, default=0,
                    help="torch/OpenMP threads of the gateway process (its OMP_NUM_THREADS); 0: torch's default (every core)")
    ap.add_argument("--timeout", type=float, default=120, help="a request slower than this is an error")
    ap.add_argument("--limit", type=float, default=600,
                    help="longest a training phase may run (the job is stopped there; figures say whether it finished)")
    args = ap.parse_args()

    from training.job_limits import available_cpus, job_threads, thread_env

    cores = available_cpus()
    if args.gateway_threads:  # the gateway process inherits this environment (bench/_stack.py env_of)
        os.environ.update(thread_env(args.gateway_threads))
    with broker_and_settings(model={"backend": "local", "max_batch": max(4, args.clients)}) as s:
        from services.gateway.auth import KeyStore

        store = KeyStore([])
        token = store.create("chat")
        store.save(s.keys_path)
        dataset = _snapshot(s.data_path / "datasets" / "bench-sim", args.records)
        clients = Clients(s.gateway.port, token, args.clients, args.max_tokens, args.timeout)
        with gateway(s, timeout=600):
            clients.ask()  # warm-up

            def idle_phase() -> dict:
                end = time.monotonic() + args.seconds
                return clients.run(lambda: time.monotonic() > end)

            phases = {"idle": idle_phase()}
            phases["training"] = train_phase(s, clients, dataset, "bounded", args.train_steps,
                                             job_threads(args.threads), args.nice, args.limit)
            if args.unbounded:
                phases["unbounded"] = train_phase(s, clients, dataset, "unbounded", args.train_steps, cores, 0,
                                                  args.limit)
            phases["idle_after"] = idle_phase()  # on a shared machine the load drifts: idle on both sides
    idle = {q: (phases["idle"][q] + phases["idle_after"][q]) / 2 for q in ("p50_s", "p95_s")}
    ratios = {name: {"p50_x_idle": round(p["p50_s"] / idle["p50_s"], 2),
                     "p95_x_idle": round(p["p95_s"] / idle["p95_s"], 2)}
              for name, p in phases.items() if not name.startswith("idle")}
    emit({"bench": "serving_during_turn", "cpus": cores, "gateway_threads": args.gateway_threads or "default",
          "clients": args.clients, "max_tokens": args.max_tokens,
          "train_steps": args.train_steps, "phases": phases, "ratios": ratios})


if __name__ == "__main__":
    main()
