"""Where an incremental sync continues from (``watcher.cursor.resume_from``): the stored
cursor ``<cache id>/<lineage>:{"<context>": <seq>}``, per context, or a full snapshot,
with the log saying why."""

from __future__ import annotations

import logging

import pytest

from watcher.cursor import StoredCursor, encode_cursor, parse_cursor, resume_from
from watcher.state import ContextLog

CACHE = "0f8e2d3c4b5a46978877665544332211"
LINEAGE = "5f1d0c2b3a49485766554433221100ff"
PURGED, NEWEST = 10, 20
LOGS = {
    "a": ContextLog(seq=NEWEST, purged_seq=PURGED, owner="r1"),
    "b": ContextLog(seq=5, purged_seq=0, owner="r2"),
}


@pytest.fixture
def caplog_info(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="watcher.cursor")
    return caplog


def _resume(raw: str | None, contexts: tuple[str, ...] = ("a", "b")) -> dict[str, int | None] | None:
    return resume_from(parse_cursor(raw), cache_id=CACHE, logs=LOGS, contexts=list(contexts))


def _logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "watcher.cursor"]


def test_a_cursor_is_written_as_the_cache_id_its_lineage_and_each_contexts_seq() -> None:
    raw = encode_cursor(CACHE, LINEAGE, {"b": 5, "a": 15})
    assert raw == f'{CACHE}/{LINEAGE}:{{"a":15,"b":5}}'
    assert parse_cursor(raw) == StoredCursor(raw, CACHE, LINEAGE, {"a": 15, "b": 5})
    assert _resume(raw) == {"a": 15, "b": 5}


def test_a_cursor_written_before_lineages_resumes_and_its_lineage_comes_from_its_text() -> None:
    """Two syncs that read the same older cursor agree on its lineage (they write one
    destination); a different cursor has another."""
    raw = f'{CACHE}:{{"a":15,"b":5}}'
    stored = parse_cursor(raw)
    assert stored is not None and stored.sent == {"a": 15, "b": 5} and stored.cache_id == CACHE
    assert _resume(raw) == {"a": 15, "b": 5}
    again, other = parse_cursor(raw), parse_cursor(f'{CACHE}:{{"a":16,"b":5}}')
    assert again is not None and other is not None
    assert again.lineage == stored.lineage != other.lineage


@pytest.mark.parametrize("raw", [None, ""])
def test_without_a_cursor_the_sync_is_a_full_snapshot(
    caplog_info: pytest.LogCaptureFixture, raw: str | None
) -> None:
    assert _resume(raw) is None
    assert _logged(caplog_info) == ["incremental: no cursor yet, full snapshot"]


def test_a_cursor_of_another_cache_means_a_full_snapshot(caplog_info: pytest.LogCaptureFixture) -> None:
    raw = encode_cursor("aaaabbbbccccddddeeeeffff00001111", LINEAGE, {"a": 15})
    assert _resume(raw) is None
    assert _logged(caplog_info) == [
        f"incremental: the cursor {raw!r} belongs to another cache, full snapshot"
    ]


@pytest.mark.parametrize(
    "raw",
    [
        "garbage",
        CACHE,
        f"{CACHE}:",
        f"{CACHE}:abc",
        f"{CACHE}:15",  # a cursor of format 3 (one seq for the whole cache)
        f'{CACHE}:{{"a": "15"}}',
        f'{CACHE}:{{"a": 1.5}}',
        f'{CACHE}:{{"a": true}}',
        f"{CACHE}:[15]",
        f'{CACHE}:{{"a": 15}}:16',
    ],
)
def test_a_malformed_or_older_cursor_means_a_full_snapshot_and_is_logged(
    caplog_info: pytest.LogCaptureFixture, raw: str
) -> None:
    assert _resume(raw) is None
    (line,) = _logged(caplog_info)
    assert repr(raw) in line and line.endswith("full snapshot")
    assert "another cache" not in line


def test_a_context_whose_log_was_purged_past_the_cursor_gets_a_full_snapshot_alone(
    caplog_info: pytest.LogCaptureFixture,
) -> None:
    """Deletions between the cursor and the purge point are gone: only a full snapshot
    of that context (which first deletes its rows) brings the destination in step; the
    other contexts go on from the cursor."""
    assert _resume(encode_cursor(CACHE, LINEAGE, {"a": PURGED - 1, "b": 3})) == {"a": None, "b": 3}
    assert _logged(caplog_info) == [
        f"incremental: a: cursor {PURGED - 1} is older than the retained change log ({PURGED}), full snapshot of it"
    ]


def test_a_context_cursor_ahead_of_the_cache_gets_a_full_snapshot(
    caplog_info: pytest.LogCaptureFixture,
) -> None:
    """The cache was restored from an older copy: same id, fewer changes."""
    assert _resume(encode_cursor(CACHE, LINEAGE, {"a": NEWEST + 1, "b": 5})) == {"a": None, "b": 5}
    assert _logged(caplog_info) == [
        f"incremental: a: cursor {NEWEST + 1} is ahead of the cache, full snapshot of it"
    ]


@pytest.mark.parametrize("seq", [PURGED, 15, NEWEST], ids=["at the purge point", "between", "at the newest"])
def test_a_valid_cursor_continues_from_its_seq_without_a_word(
    caplog_info: pytest.LogCaptureFixture, seq: int
) -> None:
    """Tombstones up to ``purged_seq`` were purged after the cursor had seen them, so a
    cursor at the purge point is still complete; one at the newest seq sends nothing."""
    assert _resume(encode_cursor(CACHE, LINEAGE, {"a": seq, "b": 5})) == {"a": seq, "b": 5}
    assert _logged(caplog_info) == []


def test_a_context_the_cursor_does_not_name_starts_from_the_beginning_of_its_log() -> None:
    """A context added to the spec was never sent: all its changes, from seq 0 (its
    tombstones become deletions of rows the destination never had: harmless)."""
    assert _resume(encode_cursor(CACHE, LINEAGE, {"b": 5})) == {"a": None, "b": 5}  # a's log was purged: full
    assert _resume(encode_cursor(CACHE, LINEAGE, {"a": 15}), contexts=("a", "c")) == {"a": 15, "c": 0}
