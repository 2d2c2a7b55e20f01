"""The schema's document cache: a repeated query text skips parsing and validation, and nothing else changes.

Accepted documents are reused; refused ones (syntax, depth, unknown fields) are never kept, so they are
refused every time; the cache stays bounded; and one cached text still answers each caller with only
what that caller may see.
"""

from __future__ import annotations

from graphql import parse

from graphql_api.documents import DocumentCache
from graphql_api.schema import build_schema
from tests.support.api import Api

JOB = "query($id: ID!) { job(id: $id) { id state } }"
DEEP = "{ jobs { edges { node { id } } } }"  # depth 4: over a limit of 2


async def test_accepted_query_is_kept_and_answers_the_same_when_repeated() -> None:
    cache = DocumentCache()
    schema = build_schema(documents=cache)
    first = await schema.execute("{ __typename }")
    second = await schema.execute("{ __typename }")
    assert first.errors is None and second.errors is None
    assert first.data == second.data == {"__typename": "Query"}
    assert len(cache) == 1
    assert cache.get("{ __typename }") is not None


async def test_refused_query_is_never_kept_and_is_refused_every_time() -> None:
    cache = DocumentCache()
    schema = build_schema(max_depth=2, documents=cache)
    for query in (DEEP, DEEP, "{ nope }", "{ nope }", "{ broken", "{ broken"):
        result = await schema.execute(query)
        assert result.errors, query
        assert result.data is None
    assert len(cache) == 0


async def test_token_limit_still_refuses_a_text_another_schema_accepted() -> None:
    """Each schema has its own cache, so a text cached under loose limits is checked under strict ones."""
    query = "{ a: __typename b: __typename c: __typename }"
    loose, strict = build_schema(), build_schema(max_tokens=5)
    assert (await loose.execute(query)).errors is None
    assert (await strict.execute(query)).errors


def test_cache_is_a_bounded_lru_that_skips_long_texts() -> None:
    cache = DocumentCache(size=2, max_query_length=100)
    document = parse("{ __typename }")
    cache.put("a", document)
    cache.put("b", document)
    cache.get("a")  # now b is the least recently used
    cache.put("c", document)
    assert cache.get("a") is document and cache.get("c") is document
    assert cache.get("b") is None
    cache.put("x" * 101, document)
    assert cache.get("x" * 101) is None
    assert len(cache) == 2


async def test_one_cached_text_answers_each_caller_with_only_their_own_job(api: Api) -> None:
    alice, bob = await api.consumer("alice"), await api.consumer("bob")
    job = await api.create_job(alice, parameters={"SLEEPTIME": 0})
    for _ in range(2):  # the second round is served from the cache
        assert (await api.data(JOB, {"id": job["id"]}, token=alice))["job"]["id"] == job["id"]
        assert (await api.data(JOB, {"id": job["id"]}, token=bob))["job"] is None
    body = await api.gql(JOB, {"id": job["id"]})
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
