"""Operations endpoints are not for strangers: /metrics needs the operator token, and introspection and
GraphiQL can be switched off (the chart's production values do)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.api import Api, running_api

INTROSPECT = "{ __schema { queryType { name } } }"


async def test_metrics_need_the_operator_token(api: Api) -> None:
    consumer = await api.consumer("alice")
    for headers in ({}, {"Authorization": f"Bearer {consumer}"}, {"Authorization": "Bearer wrong"}):
        resp = await api.http.get("/metrics", headers=headers)
        assert resp.status_code == 401
        assert "wml_jobs" not in resp.text
    allowed = await api.http.get("/metrics", headers={"Authorization": "Bearer test-admin-token"})
    assert allowed.status_code == 200 and "wml_jobs" in allowed.text


async def test_introspection_and_graphiql_are_on_in_development(api: Api) -> None:
    consumer = await api.consumer("alice")
    assert (await api.data(INTROSPECT, token=consumer))["__schema"]["queryType"]["name"] == "Query"
    page = await api.http.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()
    assert "unpkg.com" not in page.text  # its files come from this service


@pytest.mark.parametrize("caller", ["anonymous", "consumer", "operator"])
async def test_introspection_and_graphiql_can_be_switched_off(tmp_path: Path, caller: str) -> None:
    async with running_api(tmp_path / "data", introspection=False, graphiql=False) as api:
        token = {"anonymous": None, "consumer": await api.consumer("alice"), "operator": "test-admin-token"}
        body = await api.gql(INTROSPECT, token=token[caller])
        assert body.get("data") is None and body["errors"]
        page = await api.http.get("/graphql", headers={"Accept": "text/html"})
        assert "graphiql" not in page.text.lower()
        assert (await api.http.get("/graphiql/vendor/graphiql@3.8.3/graphiql.min.js")).status_code == 404
