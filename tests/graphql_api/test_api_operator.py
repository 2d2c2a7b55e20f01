"""The operator's queries and mutations over the API (consumers, grants by consumer, createConsumer,
revokeConsumer): the operator token may use them, a consumer's token is refused with PERMISSION_DENIED."""

from __future__ import annotations

from tests.support.api import Api

ADMIN = "test-admin-token"
CONSUMERS = "{ consumers { id name createdAt } }"
GRANTS = "query($c: ID, $s: GrantState) { grants(consumerId: $c, state: $s) { id consumerId assetId state } }"
REVOKE = (
    "mutation($id: ID!) { revokeConsumer(id: $id) { __typename"
    " ... on RevokedConsumer { consumer { id name } grants { id state } }"
    " ... on Error { code message } ... on NotFoundError { id } } }"
)
ME = "{ me { id } }"
CREATE = (
    "mutation($input: CreateConsumerInput!) { createConsumer(input: $input) { __typename"
    " ... on CreatedConsumer { consumer { id name } tokens { token grant { assetId expiresAt } } }"
    " ... on Error { code message } } }"
)


async def test_the_operator_creates_a_consumer_whose_tokens_work_at_once(api: Api) -> None:
    created = (
        await api.data(
            CREATE,
            {"input": {"name": "carol", "assetIds": ["dummy-job", "other-job"], "expiresIn": 3600}},
            token=ADMIN,
        )
    )["createConsumer"]
    assert created["__typename"] == "CreatedConsumer" and created["consumer"]["name"] == "carol"
    assert [t["grant"]["assetId"] for t in created["tokens"]] == ["dummy-job", "other-job"]
    assert all(t["grant"]["expiresAt"] for t in created["tokens"])
    me = (await api.data(ME, token=created["tokens"][0]["token"]))["me"]
    assert me["id"] == created["consumer"]["id"]
    unknown = await api.data(CREATE, {"input": {"name": "dan", "assetIds": ["no-such"]}}, token=ADMIN)
    assert unknown["createConsumer"]["code"] == "NOT_FOUND"
    never = await api.data(
        CREATE, {"input": {"name": "dan", "assetIds": ["dummy-job"], "expiresIn": 0}}, token=ADMIN
    )
    assert never["createConsumer"]["code"] == "VALIDATION"


async def test_the_operator_lists_consumers_and_a_consumers_grants(api: Api) -> None:
    alice = await api.consumer("alice")
    await api.consumer("bob", ("dummy-job", "other-job"))
    alice_id = (await api.data(ME, token=alice))["me"]["id"]
    consumers = (await api.data(CONSUMERS, token=ADMIN))["consumers"]
    assert [c["name"] for c in consumers] == ["alice", "bob"]  # oldest first
    grants = (await api.data(GRANTS, {"c": alice_id}, token=ADMIN))["grants"]
    assert [(g["consumerId"], g["assetId"], g["state"]) for g in grants] == [
        (alice_id, "dummy-job", "ACTIVE")
    ]
    assert len((await api.data(GRANTS, token=ADMIN))["grants"]) == 3
    assert (await api.data(GRANTS, {"s": "DEPROVISIONED"}, token=ADMIN))["grants"] == []


async def test_revoking_a_consumer_ends_its_tokens_and_cancels_its_jobs(api: Api) -> None:
    alice = await api.consumer("alice")
    bob = await api.consumer("bob")
    alice_id = (await api.data(ME, token=alice))["me"]["id"]
    job = await api.create_job(alice, parameters={"SLEEPTIME": 60})
    revoked = (await api.data(REVOKE, {"id": alice_id}, token=ADMIN))["revokeConsumer"]
    assert revoked["__typename"] == "RevokedConsumer" and revoked["consumer"]["name"] == "alice"
    assert [g["state"] for g in revoked["grants"]] == ["DEPROVISIONED"]
    refused = await api.http.post(
        "/graphql", json={"query": ME}, headers={"Authorization": f"Bearer {alice}"}
    )
    assert refused.status_code == 401
    assert refused.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    record = await api.services.store.jobs.get_job(job["id"])
    assert record is not None and record.state.value in {"CANCELING", "CANCELED"}
    assert (await api.data(ME, token=bob))["me"] is not None  # another consumer keeps its access
    again = (await api.data(REVOKE, {"id": alice_id}, token=ADMIN))["revokeConsumer"]
    assert again["__typename"] == "RevokedConsumer"  # repeating it changes nothing
    unknown = (await api.data(REVOKE, {"id": "c_unknown"}, token=ADMIN))["revokeConsumer"]
    assert (unknown["__typename"], unknown["code"]) == ("NotFoundError", "NOT_FOUND")


async def test_a_consumer_token_is_refused_the_operators_fields(api: Api) -> None:
    alice = await api.consumer("alice")
    alice_id = (await api.data(ME, token=alice))["me"]["id"]
    create = {"input": {"name": "mallory", "assetIds": ["dummy-job"]}}
    for query, variables in (
        (CONSUMERS, {}),
        (GRANTS, {"c": alice_id}),
        (REVOKE, {"id": alice_id}),
        (CREATE, create),
    ):
        body = await api.gql(query, variables, token=alice)
        assert body["errors"][0]["extensions"]["code"] == "PERMISSION_DENIED", query
    assert (await api.data(ME, token=alice))["me"]["id"] == alice_id  # nothing was revoked
