"""The server's log under a client's mistakes: one line each, no traceback, and with
``WML_LOG_FORMAT=json`` nothing but JSON lines (uvicorn's, Alembic's and Strawberry's included).

Before, every client error (a bad argument, a missing token) was logged at ERROR with a 25-line
traceback, and uvicorn and Alembic printed their own plain-text lines into a JSON log.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.support.processes import ADMIN, ServerProcess

MISTAKES = [
    {"query": "{ jobs(first: 0) { edges { node { id } } } }"},  # out of range: a client error
    {"query": "{ job(id: 1, nope: 2) { id } }"},  # unknown argument: validation
    {"query": "{ jobs { edges { node { id } } }"},  # syntax
    {"query": 'mutation { cancelJob(id: "j_x") { __typename } }'},
]


def test_client_errors_are_single_lines_and_a_json_log_is_only_json(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", log_format="json", log_level="info")
    server.start()  # a fresh database: Alembic's migration lines are in the log too
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for body in MISTAKES:
                for headers in (
                    {},
                    {"Authorization": f"Bearer {ADMIN}"},
                    {"Authorization": "Bearer wml_nope"},
                ):
                    assert http.post("/graphql", json=body, headers=headers).status_code < 500
            assert (
                http.post(
                    "/graphql", content=b"{not json", headers={"Content-Type": "application/json"}
                ).status_code
                == 400
            )
    finally:
        server.stop()
    lines = [line for line in server.log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line, whoever wrote it, is JSON
    assert not any("Traceback" in line for line in lines)
    assert any(r.get("logger", "").startswith("uvicorn") for r in records)
    assert any(r.get("logger", "").startswith("alembic") for r in records)
    refused = [r for r in records if r.get("event") == "graphql request refused"]
    assert refused and all(r["level"] == "info" and r.get("code") for r in refused)
    assert not [r for r in records if r.get("level") in ("error", "critical")]
