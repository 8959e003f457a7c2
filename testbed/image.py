"""Build the Dockerfile and run the image, with Debian's buildah and podman, here.

No container registry is reachable, so ``FROM python:3.11-slim`` is satisfied by a
local substitute: a Debian bookworm root filesystem from ``debootstrap`` (Python 3.11,
pip) imported as ``docker.io/library/python:3.11-slim``. Everything lives in a private
containers/storage root (vfs driver), so the machine's own store is never touched; the
build runs with chroot isolation. Containers run under podman with runc, cgroupfs and
explicit ulimits (this sandbox refuses crun's cgroup setup and podman's default rlimits).

The root filesystem is cached under ``~/.cache/k8s-watcher/image`` (built once per machine).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from testbed.cluster import REPO

BASE = "docker.io/library/python:3.11-slim"
TOOLS = ("debootstrap", "buildah", "podman", "runc")


def cache_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "k8s-watcher" / "image"


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


class ImageBuilder:
    """buildah and podman on a private storage root under ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.root = workdir / "storage"
        # podman refuses a runroot longer than 50 characters, and a test's temporary
        # directory under a pytest-xdist worker is longer: a short one of its own.
        self.runroot = Path(tempfile.mkdtemp(prefix="podman-run-"))
        self.log = workdir / "image.log"

    def _storage(self) -> list[str]:
        return ["--root", str(self.root), "--runroot", str(self.runroot), "--storage-driver", "vfs"]

    def _run(self, argv: Sequence[str], *, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
        with self.log.open("a") as log:
            log.write(f"$ {' '.join(argv)}\n")
            log.flush()
            return subprocess.run(
                argv, stdout=log, stderr=subprocess.STDOUT, text=True, timeout=timeout, check=True
            )

    def rootfs(self) -> Path:
        """A bookworm root filesystem with Python and pip (debootstrap, cached)."""
        target = cache_dir() / "bookworm-python"
        if (target / "usr" / "bin" / "pip").exists():
            return target
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        self._run(
            [
                "debootstrap", "--variant=minbase",
                "--include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates",
                "bookworm", str(partial), "http://deb.debian.org/debian",
            ]
        )  # fmt: skip
        # As in the python image, pip may install into the system Python.
        for marker in partial.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        partial.rename(target)
        return target

    def import_base(self) -> None:
        """The root filesystem as the Dockerfile's base image. The machine's CA bundle and
        pip configuration go in too: where PyPI is reached through a TLS-inspecting
        proxy, the build's pip needs that proxy's CA."""
        rootfs = self.rootfs()
        for conf in (Path("/etc/ssl/certs/ca-certificates.crt"), Path("/etc/pip.conf")):
            if conf.exists():
                shutil.copyfile(conf, rootfs / conf.relative_to("/"))
        ctr = subprocess.run(
            ["buildah", *self._storage(), "from", "scratch"], capture_output=True, text=True, check=True
        ).stdout.strip()
        self._run(["buildah", *self._storage(), "copy", ctr, f"{rootfs}/", "/"])
        self._run(
            [
                "buildah",
                *self._storage(),
                "config",
                "--env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                ctr,
            ]
        )
        self._run(["buildah", *self._storage(), "commit", "--rm", ctr, BASE])

    def build(self, tag: str) -> None:
        """``buildah bud`` of the repository's Dockerfile (chroot isolation, no pull)."""
        self._run(
            ["buildah", *self._storage(), "bud", "--pull=never", "--isolation", "chroot", "-t", tag,
             "-f", str(REPO / "Dockerfile"), str(REPO)],
        )  # fmt: skip

    def podman(self, *args: str) -> list[str]:
        """A podman command line on this storage root that runs in this sandbox."""
        return ["podman", *self._storage(), "--runtime", "runc", "--cgroup-manager", "cgroupfs", *args]

    def run_argv(self, tag: str, args: Sequence[str], *, options: Sequence[str] = ()) -> list[str]:
        """``podman run`` of the image, read-only root filesystem, /tmp a tmpfs."""
        nofile = subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True, text=True, check=True).stdout
        return self.podman(
            "run", "--rm", "--read-only", "--tmpfs", "/tmp",
            "--ulimit", f"nofile={nofile.strip()}:{nofile.strip()}", "--ulimit", "nproc=32768:32768",
            *options, tag, *args,
        )  # fmt: skip
