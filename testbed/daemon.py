"""The one launcher of ``k8s-watcher serve`` for the tests, the benchmarks, the chaos
run and the demo: the daemon as users run it (its console script, a subprocess), on
loopback ports it binds itself (port 0, read back from its ``--ready-file``: no port is
picked here and handed over later, so two daemons can never be given the same one),
with its health, metrics, status and memory at hand."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def console_script(name: str) -> str:
    """A console script of this environment (``k8s-watcher``, ``k8s-watcher-plugin``)."""
    return str(Path(sys.executable).parent / name)


def watcher_status(cache: Path | str, *args: str) -> str:
    """``k8s-watcher status`` of a cache file (a Path) or a cache database (a URL)."""
    where = ["--cache", str(cache)] if isinstance(cache, Path) else ["--cache-url", cache]
    out = subprocess.run(
        [console_script("k8s-watcher"), "status", *where, *args], check=True, capture_output=True, text=True
    )
    return out.stdout


class DaemonProcess:
    """``k8s-watcher serve`` for ``contexts`` of ``kubeconfig`` (None: the default one, or
    in a pod the pod's service account, as ``env`` says), writing ``cache``; its
    output goes to ``log``. The ports are known once :meth:`start` returns. ``start``
    may be called again after ``kill`` or ``terminate`` (same ports, same cache: a
    restart)."""

    def __init__(
        self,
        kubeconfig: Path | None,
        cache: Path,
        log: Path,
        contexts: str = "*",
        *,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.kubeconfig, self.cache, self.log = kubeconfig, cache, log
        self.contexts = contexts
        self.extra_args = list(extra_args)
        #: The daemon's whole environment (None: this process's).
        self.env = dict(env) if env is not None else None
        #: The ports the daemon listens on: 0 until its first start chose them.
        self.grpc_port = self.http_port = 0
        self.ready_file = log.with_name(log.name + ".ready")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def grpc_address(self) -> str:
        if not self.grpc_port:
            raise RuntimeError("the daemon's gRPC port is known once it has started")
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, *, synced: bool = True, timeout: float = 60) -> DaemonProcess:
        """Start and wait until /healthz answers 200, and (``synced``) until no informer
        is still starting or listing. The first start lets the daemon choose its ports."""
        self.ready_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                console_script("k8s-watcher"), "serve",
                *(["--kubeconfig", str(self.kubeconfig)] if self.kubeconfig else []),
                "--contexts", self.contexts, "--cache", str(self.cache),
                "--grpc-address", f"127.0.0.1:{self.grpc_port}", "--http-address", f"127.0.0.1:{self.http_port}",
                "--ready-file", str(self.ready_file),
                *self.extra_args,
            ],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=self.env,
        )  # fmt: skip
        self.wait_until(self.ready_file.exists, timeout=timeout, what="daemon listening")
        ready = json.loads(self.ready_file.read_text())
        self.grpc_port = int(ready["grpc_address"].rsplit(":", 1)[1])
        self.http_port = int(ready["http_address"].rsplit(":", 1)[1])
        self.wait_until(lambda: self._healthy(synced), timeout=timeout, what="daemon healthy")
        return self

    def wait_synced(self, timeout: float = 1800) -> float:
        """Seconds until every informer has listed (or resumed) and watches."""
        started = time.monotonic()
        self.wait_until(lambda: self._healthy(True), timeout=timeout, what="daemon synced")
        return time.monotonic() - started

    def wait_until(self, predicate: Any, *, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited while waiting for {what}:\n{self.log_tail()}")
            if predicate():
                return
            time.sleep(0.2)
        raise TimeoutError(f"{what}: not after {timeout}s\n{self.log_tail()}")

    def _healthy(self, synced: bool) -> bool:
        try:
            code, body = self.http("/healthz")
        except OSError:
            return False
        return code == 200 and (not synced or ("listing" not in body and "starting" not in body))

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # -- what it serves --------------------------------------------------------

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str) -> float:
        """The sum of one Prometheus metric's samples over all its label sets."""
        total = 0.0
        for line in self.http("/metrics")[1].splitlines():
            if line.startswith((name + "{", name + " ")):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def status(self) -> dict[str, Any]:
        """``k8s-watcher status --json`` on the daemon's cache."""
        return dict(json.loads(watcher_status(self.cache, "--json")))

    def _proc_status(self, field: str) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def rss_mb(self) -> float:
        return self._proc_status("VmRSS")

    def peak_rss_mb(self) -> float:
        return self._proc_status("VmHWM")

    # -- stopping ------------------------------------------------------------

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM (a clean stop) and its exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> None:
        """Whatever state it is in: stopped afterwards."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate()
            except subprocess.TimeoutExpired:
                self.kill()
