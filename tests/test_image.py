"""The container image: built from the Dockerfile with buildah (chroot isolation, vfs
storage, a debootstrap substitute for the python base image, see testbed/image.py) and run
with podman on a read-only root filesystem."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.cluster import ControlPlanes
from testbed.image import ImageBuilder, missing_tools
from tests.conftest import CMS, cached, configmap, eventually, namespace, unique
from watcher import state

TAG = "localhost/k8s-watcher:test"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(missing_tools()), reason=f"needs {', '.join(missing_tools())} (scripts/setup.sh)"
    ),
]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageBuilder]:
    workdir = tmp_path_factory.mktemp("image")
    builder = ImageBuilder(workdir)
    try:
        builder.import_base()
        builder.build(TAG)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"{exc}\n{builder.log.read_text()[-4000:]}")
    yield builder
    # The vfs layers are big: drop them with the storage root (podman's files are root's).
    subprocess.run(builder.podman("system", "reset", "--force"), capture_output=True, check=False)
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.rmtree(builder.runroot, ignore_errors=True)


def test_the_cli_runs_in_the_image_on_a_read_only_root(image: ImageBuilder) -> None:
    out = subprocess.run(image.run_argv(TAG, ["--help"]), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "serve" in out.stdout and "status" in out.stdout
    whoami = subprocess.run(
        image.run_argv(TAG, ["-c", "import os; print(os.getuid())"], options=["--entrypoint", "python"]),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert whoami.stdout.strip() == "10001", whoami.stderr[-2000:]


def test_the_daemon_in_the_read_only_image_writes_only_its_cache_volume(
    image: ImageBuilder, planes: ControlPlanes, tmp_path: Path
) -> None:
    server = planes.servers["prod"]
    volume = tmp_path / "volume"
    volume.mkdir()
    volume.chmod(0o777)  # the image's user (10001) writes the cache here
    kubeconfig = tmp_path / "kubeconfig"
    shutil.copyfile(planes.kubeconfig, kubeconfig)
    kubeconfig.chmod(0o644)
    pki = server.ca_file.parent
    # The daemon binds free ports itself and says which on the volume: no port is picked
    # here and handed over later (another process could take it meanwhile).
    ready = volume / "ready.json"
    name = unique("k8s-watcher")
    argv = image.run_argv(
        TAG,
        [
            "serve", "--contexts", "prod", "--cache", "/var/lib/k8s-watcher/cache.db",
            "--grpc-address", "127.0.0.1:0", "--http-address", "127.0.0.1:0",
            "--ready-file", "/var/lib/k8s-watcher/ready.json",
        ],
        options=[
            "--name", name, "--network", "host",
            "-v", f"{volume}:/var/lib/k8s-watcher", "-v", f"{kubeconfig}:/home/watcher/.kube/config:ro",
            "-v", f"{pki}:{pki}:ro",
        ],
    )  # fmt: skip
    log = (tmp_path / "container.log").open("w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:

        def healthy() -> bool:
            assert proc.poll() is None, (tmp_path / "container.log").read_text()[-3000:]
            try:
                http = json.loads(ready.read_text())["http_address"]
                with urllib.request.urlopen(f"http://{http}/healthz", timeout=5) as resp:
                    body = resp.read().decode()
            except (OSError, ValueError, KeyError):
                return False  # not listening yet (no ready file, or one being written)
            return "listing" not in body and "starting" not in body

        eventually(healthy, timeout=180, interval=1, what="the daemon in the container synced")
        cache = volume / "cache.db"
        ns = namespace(server.admin(), unique("image"))
        configmap(server.admin(), ns, "seen-from-the-container")
        eventually(lambda: cached(cache, "prod", CMS, ns), what="configmap cached on the volume")
        subprocess.run(
            image.podman("stop", "--time", "30", name), check=True, capture_output=True, timeout=60
        )
        assert proc.wait(60) == 0, (tmp_path / "container.log").read_text()[-3000:]
        with state.reading(cache) as conn:
            assert state.count_rows(conn)
    finally:
        if proc.poll() is None:
            subprocess.run(image.podman("rm", "-f", name), capture_output=True, check=False)
            proc.kill()
        log.close()
