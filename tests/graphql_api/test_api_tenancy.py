"""Tenancy through the real API: a token sees and touches only its own grant's jobs, files and asset.

Somebody else's object answers exactly like an unknown id, so a caller learns nothing about what exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from core.grants import create_consumer_with_grants
from tests.support.api import Api

UNKNOWN_JOB = "j_00000000000000000000000000000000"
UNKNOWN_FILE = "f_00000000000000000000000000000000"
ERROR_FIELDS = "__typename ... on Error { message code } ... on NotFoundError { id }"
CANCEL_JOB = f"mutation($id: ID!) {{ cancelJob(id: $id) {{ {ERROR_FIELDS} }} }}"
DELETE_JOB = f"mutation($id: ID!) {{ deleteJob(id: $id) {{ {ERROR_FIELDS} }} }}"
DELETE_FILE = f"mutation($id: ID!) {{ deleteFile(id: $id) {{ {ERROR_FIELDS} }} }}"


@dataclass
class Tenants:
    alice: str
    bob: str
    job_id: str
    file_id: str


@pytest.fixture
async def tenants(api: Api) -> Tenants:
    """Alice has a finished job and an uploaded file; Bob has a grant for the same asset."""
    alice = await api.consumer("alice")
    bob = await api.consumer("bob")
    uploaded = await api.upload(alice, b"alice's data\n", "alice.txt")
    created = await api.create_job(alice, inputs={"data": uploaded["id"]}, parameters={"SLEEPTIME": 0})
    await api.wait_for(alice, created["id"])
    return Tenants(alice=alice, bob=bob, job_id=created["id"], file_id=uploaded["id"])


def without_id(payload: dict[str, Any], ident: str) -> dict[str, Any]:
    """The payload with the echoed id replaced, so two answers can be compared."""
    return {key: str(value).replace(ident, "<id>") for key, value in payload.items()}


async def assert_same_as_unknown(
    api: Api, token: str, mutation: str, field: str, foreign: str, unknown: str
) -> None:
    theirs = (await api.data(mutation, {"id": foreign}, token=token))[field]
    nobodys = (await api.data(mutation, {"id": unknown}, token=token))[field]
    assert theirs["__typename"] == "NotFoundError"
    assert theirs["id"] == foreign
    assert without_id(theirs, foreign) == without_id(nobodys, unknown)


async def test_another_consumers_job_and_file_look_like_they_do_not_exist(api: Api, tenants: Tenants) -> None:
    assert await api.job(tenants.bob, tenants.job_id) is None
    data = await api.data(
        "query($id: ID!) { file(id: $id) { id } }", {"id": tenants.file_id}, token=tenants.bob
    )
    assert data["file"] is None
    outputs = (await api.job(tenants.alice, tenants.job_id) or {})["outputs"]
    for output in outputs:
        seen = await api.data(
            "query($id: ID!) { file(id: $id) { id } }", {"id": output["id"]}, token=tenants.bob
        )
        assert seen["file"] is None


async def test_lists_exclude_another_consumers_jobs_and_files(api: Api, tenants: Tenants) -> None:
    query = "{ jobs { nodes { id } } files { nodes { id } } }"
    bobs = await api.data(query, token=tenants.bob)
    assert bobs == {"jobs": {"nodes": []}, "files": {"nodes": []}}
    alices = await api.data(query, token=tenants.alice)
    assert [j["id"] for j in alices["jobs"]["nodes"]] == [tenants.job_id]
    assert tenants.file_id in {f["id"] for f in alices["files"]["nodes"]}
    by_job = await api.data(
        "query($job: ID) { files(jobId: $job) { nodes { id } } }", {"job": tenants.job_id}, token=tenants.bob
    )
    assert by_job["files"]["nodes"] == []


async def test_cancel_and_delete_of_another_consumers_job_answer_like_an_unknown_id(
    api: Api, tenants: Tenants
) -> None:
    await assert_same_as_unknown(api, tenants.bob, CANCEL_JOB, "cancelJob", tenants.job_id, UNKNOWN_JOB)
    await assert_same_as_unknown(api, tenants.bob, DELETE_JOB, "deleteJob", tenants.job_id, UNKNOWN_JOB)
    assert await api.job(tenants.alice, tenants.job_id) is not None


async def test_delete_of_another_consumers_file_answers_like_an_unknown_id(
    api: Api, tenants: Tenants
) -> None:
    await assert_same_as_unknown(api, tenants.bob, DELETE_FILE, "deleteFile", tenants.file_id, UNKNOWN_FILE)
    still = await api.data(
        "query($id: ID!) { file(id: $id) { id } }", {"id": tenants.file_id}, token=tenants.alice
    )
    assert still["file"] == {"id": tenants.file_id}


async def test_another_consumers_file_cannot_be_an_input(api: Api, tenants: Tenants) -> None:
    theirs = await api.create_job(tenants.bob, inputs={"data": tenants.file_id}, parameters={"SLEEPTIME": 0})
    nobodys = await api.create_job(tenants.bob, inputs={"data": UNKNOWN_FILE}, parameters={"SLEEPTIME": 0})
    assert theirs["__typename"] == "NotFoundError"
    assert without_id(theirs, tenants.file_id) == without_id(nobodys, UNKNOWN_FILE)


async def test_an_asset_outside_the_grant_answers_like_an_unknown_asset(api: Api) -> None:
    token = await api.consumer("bob", ("other-job",))
    ungranted = await api.create_job(token, "dummy-job", parameters={"SLEEPTIME": 0})
    unknown = await api.create_job(token, "no-such-asset", parameters={"SLEEPTIME": 0})
    assert ungranted["__typename"] == "NotFoundError"
    assert without_id(ungranted, "dummy-job") == without_id(unknown, "no-such-asset")
    seen = await api.data('{ asset(id: "dummy-job") { id } }', token=token)
    assert seen["asset"] is None


async def test_a_token_does_not_see_what_the_same_consumers_other_grant_created(api: Api) -> None:
    dummy, other = (
        issued.token
        for issued in await create_consumer_with_grants(
            api.services.store, "alice", ["dummy-job", "other-job"]
        )
    )
    uploaded = await api.upload(dummy, b"for dummy-job only")
    created = await api.create_job(dummy, parameters={"SLEEPTIME": 0})
    await api.wait_for(dummy, created["id"])

    assert await api.job(other, created["id"]) is None
    assert (await api.data("{ jobs { nodes { id } } files { nodes { id } } }", token=other)) == {
        "jobs": {"nodes": []},
        "files": {"nodes": []},
    }
    refused = await api.create_job(
        other, "other-job", inputs={"data": uploaded["id"]}, parameters={"SLEEPTIME": 0}
    )
    assert refused["__typename"] == "NotFoundError"


async def test_assets_lists_only_the_granted_asset(api: Api) -> None:
    token = await api.consumer("bob", ("other-job",))
    data = await api.data("{ assets { id } }", token=token)
    assert data["assets"] == [{"id": "other-job"}]
    everything = await api.data("{ assets { id } }", token="test-admin-token")
    assert {a["id"] for a in everything["assets"]} >= {"dummy-job", "other-job", "small-input"}


async def test_a_bad_token_is_refused_with_401(api: Api) -> None:
    for headers in ({"Authorization": "Bearer wml_not-a-real-token"}, {"access-token": "wml_nope"}):
        resp = await api.http.post("/graphql", json={"query": "{ assets { id } }"}, headers=headers)
        assert resp.status_code == 401
        assert resp.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        assert "wml_" not in resp.text


async def test_no_token_is_an_unauthenticated_error(api: Api) -> None:
    body = await api.gql("{ jobs { nodes { id } } }")
    assert body["data"] is None
    [error] = body["errors"]
    assert error["extensions"]["code"] == "UNAUTHENTICATED"
    upload = await api.gql('mutation { createUpload(input: {name: "x"}) { __typename } }')
    assert upload["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_the_access_token_header_works_like_bearer(api: Api, tenants: Tenants) -> None:
    resp = await api.http.post(
        "/graphql",
        json={"query": "query($id: ID!) { job(id: $id) { id } }", "variables": {"id": tenants.job_id}},
        headers={"access-token": tenants.alice},
    )
    assert resp.status_code == 200
    assert resp.json() == {"data": {"job": {"id": tenants.job_id}}}


async def test_the_operator_sees_every_consumers_jobs(api: Api, tenants: Tenants) -> None:
    bobs = await api.create_job(tenants.bob, parameters={"SLEEPTIME": 0})
    await api.wait_for(tenants.bob, bobs["id"])
    data = await api.data("{ jobs { nodes { id } } }", token="test-admin-token")
    assert {j["id"] for j in data["jobs"]["nodes"]} == {tenants.job_id, bobs["id"]}
    assert await api.job("test-admin-token", tenants.job_id) is not None


async def test_signed_urls_do_not_leak_across_consumers_files(api: Api, tenants: Tenants) -> None:
    bobs = await api.upload(tenants.bob, b"bob's data", "bob.txt")
    data = await api.data(
        "query($id: ID!) { file(id: $id) { downloadUrl } }", {"id": bobs["id"]}, token=tenants.bob
    )
    forged = data["file"]["downloadUrl"].replace(bobs["id"], tenants.file_id)
    async with httpx.AsyncClient() as anonymous:
        assert (await anonymous.get(forged)).status_code == 404
