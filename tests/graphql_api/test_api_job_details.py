"""A job's name, description, tags and own commands through GraphQL: set at createJob, shown on the job,
found with jobs(namePrefix, tags), and commands only where the asset allows them (the same rules as the
GA4GH TES endpoint, which shares them: core.jobs.check_details)."""

from __future__ import annotations

from typing import Any

from tests.support.api import Api

CREATE = (
    "mutation($input: CreateJobInput!) { createJob(input: $input) { __typename"
    " ... on Job { id name description tags { key value } commands }"
    " ... on Error { message code } ... on ValidationError { field } } }"
)
FIND = "query($p: String, $t: [TagInput!]) { jobs(namePrefix: $p, tags: $t) { edges { node { name } } } }"


async def create(api: Api, token: str, **fields: Any) -> dict[str, Any]:
    job_input = {"assetId": "dummy-job", "parameters": {"SLEEPTIME": 60}, **fields}
    created: dict[str, Any] = (await api.data(CREATE, {"input": job_input}, token=token))["createJob"]
    return created


async def test_a_jobs_name_description_and_tags_are_kept_and_found(api: Api) -> None:
    token = await api.consumer("alice")
    first = await create(
        api,
        token,
        name="align-1",
        description="first lane",
        tags=[{"key": "sample", "value": "a"}, {"key": "run", "value": "7"}],
    )
    assert first["__typename"] == "Job", first
    assert (first["name"], first["description"]) == ("align-1", "first lane")
    assert first["tags"] == [{"key": "run", "value": "7"}, {"key": "sample", "value": "a"}]
    assert first["commands"] == []
    await create(api, token, name="align-2", tags=[{"key": "sample", "value": "b"}])
    await create(api, token, name="call-1")

    async def names(prefix: str | None = None, tags: list[dict[str, str]] | None = None) -> set[str]:
        found = await api.data(FIND, {"p": prefix, "t": tags}, token=token)
        return {e["node"]["name"] for e in found["jobs"]["edges"]}

    assert await names("align") == {"align-1", "align-2"}
    assert await names(tags=[{"key": "sample"}]) == {"align-1", "align-2"}
    assert await names(tags=[{"key": "sample", "value": "b"}]) == {"align-2"}
    assert await names("call", [{"key": "sample"}]) == set()
    bob = await api.consumer("bob")
    assert (await api.data(FIND, {"p": "align"}, token=bob))["jobs"]["edges"] == []

    twice = await create(api, token, tags=[{"key": "k", "value": "1"}, {"key": "k", "value": "2"}])
    assert (twice["__typename"], twice["field"]) == ("ValidationError", "tags")
    long = await create(api, token, name="x" * 201)
    assert (long["__typename"], long["field"]) == ("ValidationError", "name")


async def test_own_commands_run_only_where_the_asset_allows_them(api: Api) -> None:
    token = await api.consumer("alice")  # a token is one grant: one asset
    refused = await create(api, token, commands=[["sh", "-c", "cat /etc/passwd"]])
    assert (refused["__typename"], refused["field"]) == ("ValidationError", "commands")
    assert "runs its own command" in refused["message"]

    steps = [
        ["sh", "-c", 'echo one > "$WML_OUTPUT_RESULT"'],
        ["sh", "-c", 'echo two >> "$WML_OUTPUT_RESULT"'],
    ]
    token = await api.consumer("carol", ("shell-job",))
    ran = await create(api, token, assetId="shell-job", commands=steps)
    assert ran["__typename"] == "Job" and ran["commands"] == steps
    job = await api.wait_for(token, ran["id"])
    assert job["state"] == "COMPLETE", job
    [result] = job["outputs"]
    assert (await api.http.get(result["downloadUrl"])).content == b"one\ntwo\n"
    too_many = await create(api, token, assetId="shell-job", commands=[["true"]] * 4)
    assert (too_many["__typename"], too_many["field"]) == ("ValidationError", "commands")
