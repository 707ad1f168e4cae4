"""Preemption: SIGTERM to ``vipo train`` saves a checkpoint at the next step boundary and exits resumable.

Spot reclaims and Slurm/PAI kills send SIGTERM, then SIGKILL a little later. While :func:`stop_on_sigterm` is
active (the driver, during ``fit``), SIGTERM writes a stop request into the run folder; at the end of its current
optimiser step each worker sees it (:func:`stop_requested`, rank 0's answer broadcast so all ranks stop at the same
step), writes a complete checkpoint of that step and returns. ``fit`` then raises :class:`Preempted` and the CLI
exits with :data:`EXIT_PREEMPTED` (75, ``EX_TEMPFAIL``: relaunch the same command to resume exactly there). If
the workers are not done within ``failure.preemption_grace_s`` the driver stops waiting and exits with
:data:`EXIT_PREEMPTION_TIMEOUT` (143, as if killed by SIGTERM); the relaunch then resumes from the newest
complete checkpoint. Set the grace below the scheduler's SIGTERM-to-SIGKILL window (Slurm ``KillWait``,
Kubernetes ``terminationGracePeriodSeconds``).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from vipo.train.checkpointing import atomic_write_text

__all__ = [
    "EXIT_PREEMPTED",
    "EXIT_PREEMPTION_TIMEOUT",
    "STOP_REQUEST_FILE",
    "Preempted",
    "PreemptionTimeout",
    "stop_on_sigterm",
    "stop_requested",
]

EXIT_PREEMPTED = 75
EXIT_PREEMPTION_TIMEOUT = 143
STOP_REQUEST_FILE = ".stop_requested"


class Preempted(Exception):
    """The run stopped on SIGTERM after writing a complete checkpoint; relaunching resumes from it."""


class PreemptionTimeout(Exception):
    """SIGTERM arrived but the workers did not checkpoint within the grace time; the driver gave up waiting."""


def stop_requested(run_dir: Path) -> bool:
    return (Path(run_dir) / STOP_REQUEST_FILE).is_file()


@contextlib.contextmanager
def stop_on_sigterm(run_dir: Path, grace_s: float) -> Iterator[threading.Event]:
    """While active, SIGTERM asks the run in ``run_dir`` to stop (the returned event is set) and, after
    ``grace_s`` seconds without the body finishing, interrupts it with :class:`PreemptionTimeout`. A request left
    by an earlier launch is cleared first. Outside the main thread (where no signal handler can be set) it only
    clears the request."""
    request = Path(run_dir) / STOP_REQUEST_FILE
    request.unlink(missing_ok=True)
    signalled = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield signalled
        return
    timer: threading.Timer | None = None
    expired = threading.Event()
    main_thread_id = threading.main_thread().ident

    def expire() -> None:
        expired.set()
        # A real signal to the main thread wakes a blocking wait (a simulated one would not) and re-enters our own
        # handler; SIGINT's handler may belong to someone else (Ray).
        signal.pthread_kill(main_thread_id, signal.SIGTERM)

    def on_sigterm(signum, frame) -> None:
        nonlocal timer
        if expired.is_set():
            raise PreemptionTimeout(
                f"SIGTERM: no checkpoint within failure.preemption_grace_s={grace_s:g} s; relaunch to resume from "
                "the newest complete checkpoint")
        if signalled.is_set():
            return
        signalled.set()
        print(f"SIGTERM: checkpointing at the next step boundary (up to {grace_s:g} s), then exiting",
              file=sys.stderr, flush=True)
        atomic_write_text(f"{time.time()}\n", request)
        timer = threading.Timer(grace_s, expire)
        timer.daemon = True
        timer.start()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield signalled
    finally:
        signal.signal(signal.SIGTERM, previous)
        if timer is not None:
            timer.cancel()
        request.unlink(missing_ok=True)
