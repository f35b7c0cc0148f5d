"""The API's trust boundaries: who may write, and which requests count as a replica's."""

from __future__ import annotations

import pytest

from anomaly_stream.serve.views import ApiError, authorise_read, authorise_write, check_hop, hop_value
from anomaly_stream.settings import Settings


def test_a_write_needs_the_configured_bearer_token():
    authorise_write("k3y", "Bearer k3y")
    for key, header, status in (("", "Bearer ", 403), ("", "", 403), ("k3y", "", 401),
                                ("k3y", "Bearer k3", 401), ("k3y", "bearer k3y", 401), ("k3y", "Bearer k3yé", 401)):
        with pytest.raises(ApiError) as caught:
            authorise_write(key, header)
        assert caught.value.status == status


def test_a_hop_header_is_believed_only_with_a_fresh_signature():
    now = 1_800_000_000.0
    signed = hop_value("peer-k", "/api/v1/anomalies?limit=5", now)
    check_hop("peer-k", signed, "/api/v1/anomalies?limit=5", now + 10)
    check_hop("", "1", "/api/v1/stats", now)  # no key configured: believed
    for value, path, at in ((signed, "/api/v1/anomalies?limit=500", now), (signed, "/api/v1/anomalies?limit=5", now + 31),
                            ("1", "/api/v1/stats", now), (hop_value("other", "/x", now), "/x", now),
                            ("nan.00", "/x", now), ("1e9." + signed.split(".")[1], "/api/v1/anomalies?limit=5", 1e9)):
        with pytest.raises(ApiError) as caught:
            check_hop("peer-k", value, path, at)
        assert caught.value.status == 401


def test_reads_need_the_read_or_the_write_key_once_a_read_key_is_set():
    open_api = Settings()
    authorise_read(open_api, "")  # no key configured: reads are open
    keyed = Settings(api_read_key="r-key", api_write_key="w-key")
    authorise_read(keyed, "Bearer r-key")
    authorise_read(keyed, "Bearer w-key")
    for header in ("", "Bearer ", "Bearer r-ke", "r-key", "Basic r-key"):
        with pytest.raises(ApiError) as caught:
            authorise_read(keyed, header)
        assert caught.value.status == 401
    reads_only = Settings(api_read_key="r-key")
    with pytest.raises(ApiError):
        authorise_read(reads_only, "Bearer ")  # an empty write key is no key
