"""The programmable TLS origin behaves as programmed and counts requests per path."""

from __future__ import annotations

import uuid

import pytest
import requests

from tests.testbed.origin import Origin


@pytest.mark.parametrize(
    ("behaviour", "expected_statuses"),
    [
        ({}, [200, 200]),
        ({"status": 404}, [404, 404]),
        ({"fail_first": 1}, [500, 200]),
        ({"fail_first": 1, "fail_status": 503}, [503, 200]),
    ],
)
def test_origin_answers_as_programmed_and_counts(
    origin: Origin, behaviour: dict[str, object], expected_statuses: list[int]
) -> None:
    path = f"/{uuid.uuid4().hex}"
    url = origin.program(path, body=b"hello", **behaviour)
    statuses = [requests.get(url, verify=str(origin.ca_file), timeout=10).status_code for _ in expected_statuses]
    assert statuses == expected_statuses
    assert origin.count(path) == len(expected_statuses)


def test_origin_is_verified_only_with_the_test_ca(origin: Origin) -> None:
    url = origin.program(f"/{uuid.uuid4().hex}", body=b"x")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url, timeout=10)  # system roots do not know the test CA
