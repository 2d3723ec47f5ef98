"""How much of the machine a training or evaluation job takes, so that the gateway serving
on the same machine stays usable: a bounded number of torch threads (``training.threads``)
and a lower priority (``training.nice``). Priority alone does not do it: a job at nice 19
with a thread on every core still left the gateway's requests timing out (issue #11)."""

from __future__ import annotations

import os


def job_threads(setting: int, cpus: int | None = None) -> int:
    """Threads a job gets: ``training.threads``, where 0 means the machine's cores less one
    (at least one), leaving a core to the gateway."""
    if setting > 0:
        return setting
    return max(1, (cpus or available_cpus()) - 1)


def available_cpus() -> int:
    """The cores this process may run on (its affinity mask: a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def thread_env(threads: int) -> dict[str, str]:
    """Variables for a job's environment: the native thread pools (OpenMP, MKL, OpenBLAS, the
    tokenizers' rayon pool) read them when they start."""
    n = str(threads)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "RAYON_NUM_THREADS": n}


def limit_this_process(threads: int | None, nice: int) -> None:
    """Bound the calling job process: torch's thread pools (unless ``threads`` is None) and
    its niceness (raised to ``nice``, never lowered). Call it at the top of a job's entry
    point, before any work."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # settable only before the first inter-op work; the intra-op bound is what counts
            pass
    current = os.nice(0)
    if nice > current:
        os.nice(nice - current)
