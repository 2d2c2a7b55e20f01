"""A property-based fuzz run of the GraphQL API: a few thousand generated operations, valid ones and ones
with a schema violation, sent over HTTP with a consumer's token and without one. Whatever they hold, the
server answers without a 5xx, never with a masked internal error, and logs no error or traceback.

The operations come from hypothesis-graphql, generated from the schema the server serves, with a fixed
seed (``derandomize``) so a failure is reproduced by running the test again. ``uploadFile`` is left out
(it needs a multipart request; tests/security/test_bodies.py attacks it).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import graphql
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import Mode, from_schema, nodes

from tests.support.api import Api, running_api

# Generating and sending 2,000 operations takes about 90 s on 2 idle cores: more than the suite's
# per-test timeout allows on a loaded machine (and a timeout inside generation would be misreported by
# Hypothesis as a flaky strategy).
pytestmark = pytest.mark.timeout(900)
ROOT = Path(__file__).resolve().parents[2]
VALID, INVALID = 1500, 500
BATCH = 16
MASKED = "Internal error"
SCALARS = {
    "Long": st.integers(-(2**53), 2**53).map(nodes.Int),
    "JSON": st.one_of(
        st.dictionaries(st.sampled_from(["SLEEPTIME", "x", ""]), st.integers(-10, 10), max_size=2).map(
            lambda d: graphql.ObjectValueNode(
                fields=tuple(
                    graphql.ObjectFieldNode(name=graphql.NameNode(value=k or "k"), value=nodes.Int(v))
                    for k, v in d.items()
                )
            )
        ),
        st.integers().map(nodes.Int),
        st.text(max_size=20).map(nodes.String),
    ),
    "DateTime": st.sampled_from(["2026-01-01T00:00:00Z", "yesterday"]).map(nodes.String),
}


def _operations(count: int, mode: Mode) -> list[str]:
    schema = graphql.build_schema((ROOT / "schema.graphql").read_text())
    fields = [
        name
        for root in (schema.query_type, schema.mutation_type)
        if root is not None
        for name in root.fields
        if name != "uploadFile"
    ]
    found: list[str] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(from_schema(schema, fields=fields, custom_scalars=SCALARS, mode=mode))
    def collect(operation: object) -> None:
        found.append(str(operation))

    collect()
    return found


@pytest.fixture(scope="module")
def operations() -> list[str]:
    return _operations(VALID, Mode.POSITIVE) + _operations(INVALID, Mode.NEGATIVE)


async def test_generated_operations_get_no_server_error_and_log_no_traceback(
    tmp_path: Path, operations: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    assert len(operations) >= 1000
    caplog.set_level(logging.WARNING)
    with structlog.testing.capture_logs() as logs:
        async with running_api(tmp_path / "data") as api:
            token = await api.consumer("fuzzer")
            await api.upload(token, b"some input")  # so that some generated ids meet real rows
            for start in range(0, len(operations), BATCH):  # a few at once, as clients would
                batch = operations[start : start + BATCH]
                callers = [token if (start + n) % 4 else None for n in range(len(batch))]  # 1/4 anonymous
                await asyncio.gather(*(_send(api, q, c) for q, c in zip(batch, callers, strict=True)))
    assert [e for e in logs if e["log_level"] in ("error", "critical") or "exc_info" in e] == []
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def _send(api: Api, query: str, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = await api.http.post("/graphql", json={"query": query}, headers=headers)
    assert resp.status_code < 500, (query, resp.text[:500])
    assert MASKED not in resp.text, (query, resp.text[:500])
