"""Where an incremental sync continues from (``watcher.plugin.resume_from``): the stored
cursor ``<cache id>:<seq>``, or a full snapshot, with the log saying why."""

from __future__ import annotations

import logging

import pytest

from watcher.plugin import resume_from

CACHE = "0f8e2d3c4b5a46978877665544332211"
PURGED, NEWEST = 10, 20


@pytest.fixture
def caplog_info(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="watcher.plugin")
    return caplog


def _resume(raw: str | None) -> int | None:
    return resume_from(raw, cache_id=CACHE, purged_seq=PURGED, newest_seq=NEWEST)


def _logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "watcher.plugin"]


@pytest.mark.parametrize("raw", [None, ""])
def test_without_a_cursor_the_sync_is_a_full_snapshot(
    caplog_info: pytest.LogCaptureFixture, raw: str | None
) -> None:
    assert _resume(raw) is None
    assert _logged(caplog_info) == ["incremental: no cursor yet, full snapshot"]


def test_a_cursor_of_another_cache_file_means_a_full_snapshot(caplog_info: pytest.LogCaptureFixture) -> None:
    raw = "aaaabbbbccccddddeeeeffff00001111:15"
    assert _resume(raw) is None
    assert _logged(caplog_info) == [
        f"incremental: the cursor {raw!r} belongs to another cache file, full snapshot"
    ]


@pytest.mark.parametrize(
    "raw",
    [
        "garbage",
        CACHE,
        f"{CACHE}:",
        f"{CACHE}:abc",
        f"{CACHE}:-3",
        f"{CACHE}:1.5",
        f"{CACHE}: 15",
        f"{CACHE}:15:16",
    ],
)
def test_a_malformed_cursor_means_a_full_snapshot_and_is_logged(
    caplog_info: pytest.LogCaptureFixture, raw: str
) -> None:
    assert _resume(raw) is None
    (line,) = _logged(caplog_info)
    assert repr(raw) in line and line.endswith("full snapshot")


def test_a_cursor_whose_seq_has_a_non_ascii_digit_means_a_full_snapshot_not_a_crash(
    caplog_info: pytest.LogCaptureFixture,
) -> None:
    raw = f"{CACHE}:1\N{SUPERSCRIPT TWO}"
    assert _resume(raw) is None
    (line,) = _logged(caplog_info)
    assert repr(raw) in line and line.endswith("full snapshot")


def test_a_malformed_cursor_of_this_cache_is_logged_as_malformed_not_as_another_caches(
    caplog_info: pytest.LogCaptureFixture,
) -> None:
    assert _resume(f"{CACHE}:abc") is None
    (line,) = _logged(caplog_info)
    assert "another cache file" not in line


def test_a_cursor_older_than_the_purged_tombstones_means_a_full_snapshot(
    caplog_info: pytest.LogCaptureFixture,
) -> None:
    """Deletions between the cursor and the purge point are gone: only a full snapshot
    (which first deletes the context's rows) can bring the destination in step."""
    assert _resume(f"{CACHE}:{PURGED - 1}") is None
    assert _logged(caplog_info) == [
        f"incremental: cursor {PURGED - 1} is older than the retained change log ({PURGED}), full snapshot"
    ]


def test_a_cursor_ahead_of_the_cache_means_a_full_snapshot(caplog_info: pytest.LogCaptureFixture) -> None:
    """The cache file was restored from an older copy: same id, fewer changes."""
    assert _resume(f"{CACHE}:{NEWEST + 1}") is None
    assert _logged(caplog_info) == [
        f"incremental: cursor {NEWEST + 1} is ahead of the cache ({NEWEST}), full snapshot"
    ]


@pytest.mark.parametrize("seq", [PURGED, 15, NEWEST], ids=["at the purge point", "between", "at the newest"])
def test_a_valid_cursor_continues_from_its_seq_without_a_word(
    caplog_info: pytest.LogCaptureFixture, seq: int
) -> None:
    """Tombstones up to ``purged_seq`` were purged after the cursor had seen them, so a
    cursor at the purge point is still complete; one at the newest seq sends nothing."""
    assert _resume(f"{CACHE}:{seq}") == seq
    assert _logged(caplog_info) == []


def test_a_cursor_with_leading_zeros_is_its_number(caplog_info: pytest.LogCaptureFixture) -> None:
    assert _resume(f"{CACHE}:0015") == 15
