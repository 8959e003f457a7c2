"""The API error predicates (watcher.kube): which are true for each status."""

from __future__ import annotations

import pytest

from watcher import kube
from watcher.kube import ApiError

PREDICATES = {
    "transport": kube.is_transport,
    "forbidden": kube.is_forbidden,
    "not_found": kube.is_not_found,
    "expired": kube.is_expired,
    "too_many_requests": kube.is_too_many_requests,
    "server_error": kube.is_server_error,
    "retryable": kube.is_retryable,
    "unsupported_request": kube.is_unsupported_request,
    "credentials_unavailable": kube.is_credentials_unavailable,
    "conflict": kube.is_conflict,
    "already_exists": kube.is_already_exists,
}

# status -> the predicates that hold for it (every other one is false)
TABLE = [
    (0, {"transport", "retryable"}),  # no HTTP answer: refused, reset, timed out, TLS
    (400, {"unsupported_request"}),
    (401, {"forbidden"}),
    (403, {"forbidden"}),
    (404, {"not_found"}),
    (405, set()),
    (409, {"conflict"}),  # with no Status reason: not known to be AlreadyExists
    (410, {"expired"}),
    (422, {"unsupported_request"}),
    (429, {"too_many_requests", "retryable"}),
    (500, {"server_error", "retryable"}),
    (501, {"server_error", "retryable", "unsupported_request"}),
    (502, {"server_error", "retryable"}),
    (503, {"server_error", "retryable"}),
    (504, {"server_error", "retryable"}),
]


@pytest.mark.parametrize(("status", "true"), TABLE, ids=[str(status) for status, _ in TABLE])
def test_error_predicates_by_status(status: int, true: set[str]) -> None:
    exc = ApiError(status, "Reason", "message")
    assert {name for name, predicate in PREDICATES.items() if predicate(exc)} == true


def test_credentials_that_cannot_be_obtained_are_neither_transport_nor_retried_unchanged() -> None:
    exc = kube.CredentialsUnavailable("exec credential plugin 'aws' not found")
    assert {name for name, predicate in PREDICATES.items() if predicate(exc)} == {"credentials_unavailable"}
    assert str(exc) == "credentials unavailable: exec credential plugin 'aws' not found"


def test_the_table_covers_every_predicate_of_kube() -> None:
    public = {name.removeprefix("is_") for name in dir(kube) if name.startswith("is_")}
    assert public == set(PREDICATES)
    assert set().union(*(true for _, true in TABLE)) | {"credentials_unavailable", "already_exists"} == set(
        PREDICATES
    )


@pytest.mark.parametrize(
    ("status_reason", "true"),
    [
        ("AlreadyExists", {"conflict", "already_exists"}),  # a create of a name that exists
        ("Conflict", {"conflict"}),  # an update with a stale resourceVersion
    ],
)
def test_a_409_is_already_exists_only_when_the_status_says_so(status_reason: str, true: set[str]) -> None:
    exc = ApiError(409, "Conflict", 'leases "x" already exists', status_reason=status_reason)
    assert {name for name, predicate in PREDICATES.items() if predicate(exc)} == true
    assert exc.status_reason == status_reason
    assert str(exc) == 'HTTP 409 Conflict: leases "x" already exists'  # unchanged by status_reason


@pytest.mark.parametrize(
    ("status", "reason", "message", "text"),
    [
        (403, "Forbidden", "configmaps is forbidden", "HTTP 403 Forbidden: configmaps is forbidden"),
        (0, "connection error", "connection refused", "connection error: connection refused"),
    ],
)
def test_an_api_error_reads_as_status_reason_and_message(
    status: int, reason: str, message: str, text: str
) -> None:
    exc = ApiError(status, reason, message)
    assert str(exc) == text
    assert (exc.status, exc.reason, exc.message) == (status, reason, message)
