"""``k8s-watcher report`` on the hardening data set, opened in headless Chromium."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import uuid
from pathlib import Path

import pytest

from testbed.cluster import KUBE_VERSION
from tests.hardening import EAST, WEST, Hardened, k8s_watcher

pytest_plugins = ["tests.hardening_fixtures"]

#: Headless, as root, and nothing that reaches the network on its own; any request the
#: page itself makes fails name resolution (and says so on the console).
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0", "--host-resolver-rules=MAP * ~NOTFOUND",
]  # fmt: skip
SECTIONS = ("summary", "clusters", "inventory", "images", "checks")


def chromium(page: Path, workdir: Path, *action: str) -> tuple[str, list[str]]:
    """Open ``page``; its output (for ``--dump-dom``, the DOM) and its console messages."""
    exe = shutil.which("chromium")
    assert exe, "Debian's chromium is missing: run scripts/setup.sh"
    profile = workdir / f"chromium-{uuid.uuid4().hex[:8]}"
    out = subprocess.run(
        [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *action, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout, re.findall(r":CONSOLE[^\]]*\] (.*)", out.stderr)


@pytest.fixture(scope="module")
def report(hardened: Hardened, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    result = k8s_watcher("report", "--dsn", hardened.dsn, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def test_the_console_capture_sees_a_script_error(tmp_path: Path) -> None:
    """The harness itself: a page that throws must show up on the console we read."""
    page = tmp_path / "broken.html"
    page.write_text("<!doctype html><p>x</p><script>undefinedFunction()</script>")
    _, console = chromium(page, tmp_path, "--dump-dom")
    assert any("ReferenceError" in line for line in console), console


def test_the_report_renders_every_section_without_console_errors(report: Path, tmp_path: Path) -> None:
    dom, console = chromium(report, tmp_path, "--dump-dom")
    assert console == []
    assert 'data-ready="true"' in dom.split(">", 2)[1]  # the script ran to its end
    for section in SECTIONS:
        assert f'<section id="{section}">' in dom, section
    assert re.search(r'id="filter-count">\d+ of \d+ checks<', dom)


def test_the_report_is_one_file_that_requests_nothing(report: Path) -> None:
    html = report.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)|@import|url\(""", html)
    assert "<script>" in html and "<style>" in html and "<svg" in html


def test_the_report_shows_inventory_versions_freshness_and_offending_objects(
    hardened: Hardened, report: Path
) -> None:
    html = report.read_text()
    clusters = html.split('<section id="clusters">')[1].split("</section>")[0]
    for ctx in (EAST, WEST):
        assert f"<b>{ctx}</b></td><td>{KUBE_VERSION}</td>" in clusters
    # When each context was synced (seconds or minutes ago, by how loaded the machine is).
    assert len(re.findall(r"<td>\d+ (?:s|min) ago</td>", clusters)) == 2, clusters
    inventory = html.split('<section id="inventory">')[1].split("</section>")[0]
    assert "<td>k8s_pods</td>" in inventory
    images = html.split('<section id="images">')[1].split("</section>")[0]
    assert "registry.example/app:1.4.2" in images and "nginx:latest" in images
    checks = html.split('<section id="checks">')[1].split("</section>")[0]
    host_pid = checks.split("<code>host-pid</code>")[1].split("</details>")[0]
    assert "east: fail (2)" in host_pid and "west: pass" in host_pid
    assert "cron-host-pid" in host_pid and hardened.namespaces["bad"] in host_pid


def test_the_report_screenshot_is_a_full_page(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    _, console = chromium(
        report, tmp_path, "--window-size=1280,3000", "--hide-scrollbars", f"--screenshot={shot}"
    )
    assert console == []
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1280, 3000)
    assert len(png) > 100_000  # charts, tables and text; a blank page is a few kB
