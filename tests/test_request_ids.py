"""Every request gets an id that is echoed back and bound to its log lines; a forged one is replaced."""

from __future__ import annotations

import pytest

from tests.support.api import Api


async def test_a_request_id_is_echoed_and_bound_to_the_log_lines_of_that_request(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    body = {
        "assetId": "dummy-job",
        "transferProcessId": "tp-rid",
        "callbackAddress": "http://127.0.0.1:9/cb",
        "resourceDefinitionId": "rd-1",
        "type": "provision",
        "policy": {"assignee": "c1"},
    }
    resp = await api.http.post("/provision/", json=body, headers={"X-Request-ID": "trace-42"})
    assert resp.status_code == 503  # provisioning is not configured here: refused, and logged
    assert resp.headers["x-request-id"] == "trace-42"
    captured = capsys.readouterr()
    [line] = [x for x in (captured.out + captured.err).splitlines() if "provision request refused" in x]
    assert "request_id=trace-42" in line


async def test_an_unsafe_request_id_is_replaced(api: Api) -> None:
    resp = await api.http.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    echoed = resp.headers["x-request-id"]
    assert echoed != "bad id\twith spaces"
    assert len(echoed) == 16
    fresh = await api.http.get("/healthz")
    assert fresh.headers["x-request-id"] != echoed
