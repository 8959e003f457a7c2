"""A watch stream's ERROR event (a Status object) to the exception the informer acts on."""

from __future__ import annotations

import pytest

from watcher.informers import ResourceInformer, StreamingListUnsupported, WatchExpired
from watcher.kube import ApiError


@pytest.mark.parametrize("streaming", [True, False])
def test_an_error_event_410_means_the_resource_version_expired(streaming: bool) -> None:
    exc = ResourceInformer._watch_error(
        {"code": 410, "reason": "Expired", "message": "too old"}, streaming_list=streaming
    )
    assert isinstance(exc, WatchExpired)
    assert "too old" in str(exc)


@pytest.mark.parametrize("code", [400, 422])
def test_an_error_event_400_or_422_means_no_streaming_list_only_during_one(code: int) -> None:
    exc = ResourceInformer._watch_error({"code": code, "message": "no"}, streaming_list=True)
    assert isinstance(exc, StreamingListUnsupported)
    plain = ResourceInformer._watch_error({"code": code, "message": "no"}, streaming_list=False)
    assert type(plain) is ApiError
    assert plain.status == code


@pytest.mark.parametrize(("code", "streaming"), [(500, True), (500, False), (403, True), (429, False)])
def test_other_error_events_are_api_errors_with_their_status_reason_and_message(
    code: int, streaming: bool
) -> None:
    exc = ResourceInformer._watch_error(
        {"code": code, "reason": "SomeReason", "message": "boom"}, streaming_list=streaming
    )
    assert type(exc) is ApiError
    assert exc.status == code
    assert exc.reason == "SomeReason"
    assert exc.message == "boom"


def test_an_error_event_without_a_code_is_an_api_error_of_status_0() -> None:
    exc = ResourceInformer._watch_error({"kind": "Status"}, streaming_list=False)
    assert type(exc) is ApiError
    assert exc.status == 0
    assert exc.reason == "watch error"
