"""GA4GH TES 1.1 over a real socket: jobs seen, listed, paged and cancelled as TES tasks with the consumer's
token, another consumer's task unknown, and every response validated against the official OpenAPI document
(tests/support/specs/tes-1.1.openapi.yaml, each response against the schema its operation names)."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import tes as py_tes
import yaml
from referencing import Registry, Resource

from tests.support.api import Api

# The official document (GA4GH, Apache 2.0), as handed to the project in shared/specs, kept beside the tests
# so a clean clone validates against it.
SPEC_PATH = Path(__file__).resolve().parents[1] / "support" / "specs" / "tes-1.1.openapi.yaml"
BASE = "/ga4gh/tes/v1"
# The document's service-info schemas are references to the GA4GH service-info specification, which this
# machine cannot fetch: the fields that specification requires of a Service, written here.
SERVICE_INFO_URL = (
    "https://raw.githubusercontent.com/ga4gh-discovery/ga4gh-service-info/v1.0.0/service-info.yaml"
)
SERVICE_INFO = {
    "components": {
        "schemas": {
            "ServiceType": {
                "type": "object",
                "required": ["group", "artifact", "version"],
                "properties": {n: {"type": "string"} for n in ("group", "artifact", "version")},
            },
            "Service": {
                "type": "object",
                "required": ["id", "name", "type", "organization", "version"],
                "properties": {
                    "id": {"type": "string"},
                    "name": {"type": "string"},
                    "type": {"$ref": "#/components/schemas/ServiceType"},
                    "organization": {
                        "type": "object",
                        "required": ["name", "url"],
                        "properties": {"name": {"type": "string"}, "url": {"type": "string"}},
                    },
                    "version": {"type": "string"},
                },
            },
        }
    }
}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    assert SPEC_PATH.exists(), f"the TES OpenAPI document is expected at {SPEC_PATH}"
    loaded: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
    return loaded


def conforms(spec: dict[str, Any], path: str, method: str, body: Any, *, minimal: bool = False) -> None:
    """``body`` is valid against the 200 response schema the document gives ``method path``.

    ``minimal``: a MINIMAL view, which the document defines as "ONLY the fields id and state" while its
    tesTask schema requires ``executors``; the view's own definition is followed (tesTask without
    ``required``), as TES servers and clients do."""
    schema = spec["paths"][path][method]["responses"][200]["content"]["application/json"]["schema"]
    if minimal:
        spec = copy.deepcopy(spec)
        del spec["components"]["schemas"]["tesTask"]["required"]
    registry = Registry().with_resources(
        [("urn:tes", Resource.opaque(spec)), (SERVICE_INFO_URL, Resource.opaque(SERVICE_INFO))]
    )
    wrapped = {"$ref": schema["$ref"]} if "$ref" in schema else schema  # already absolute
    jsonschema.Draft202012Validator(wrapped, registry=registry).validate(body)


def _local_refs(node: Any, base: str) -> Any:
    """The document's ``#/...`` references made absolute (``urn:tes#/...``) for the registry."""
    if isinstance(node, dict):
        return {
            k: (
                base + v if k == "$ref" and isinstance(v, str) and v.startswith("#") else _local_refs(v, base)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_local_refs(item, base) for item in node]
    return node


@pytest.fixture(scope="module")
def absolute_spec(spec: dict[str, Any]) -> dict[str, Any]:
    resolved: dict[str, Any] = _local_refs(spec, "urn:tes")
    return resolved


async def tes(api: Api, token: str, method: str, path: str, **params: Any) -> httpx.Response:
    return await api.http.request(
        method, f"{BASE}{path}", params=params, headers={"Authorization": f"Bearer {token}"}
    )


async def test_jobs_are_tes_tasks_in_every_view_and_page_and_cancel(
    api: Api, absolute_spec: dict[str, Any]
) -> None:
    token = await api.consumer("alice")
    bob = await api.consumer("bob")
    done = await api.create_job(token, parameters={"SLEEPTIME": 0})
    await api.wait_for(token, done["id"], {"COMPLETE"})
    long = [await api.create_job(token, parameters={"SLEEPTIME": 60}) for _ in range(2)]

    info = await tes(api, token, "GET", "/service-info")
    assert info.status_code == 200
    conforms(absolute_spec, "/service-info", "get", info.json())
    assert "localhost/wml/dummy-job:1" in info.json()["description"]

    for view in ("MINIMAL", "BASIC", "FULL"):
        got = await tes(api, token, "GET", f"/tasks/{done['id']}", view=view)
        assert got.status_code == 200, got.text
        conforms(absolute_spec, "/tasks/{id}", "get", got.json(), minimal=view == "MINIMAL")
        assert (got.json()["id"], got.json()["state"]) == (done["id"], "COMPLETE")
    full = got.json()
    [executor] = full["executors"]
    assert executor["image"] == "localhost/wml/dummy-job:1" and executor["env"]["SLEEPTIME"] == "0"
    [task_log] = full["logs"]
    assert task_log["logs"][0]["exit_code"] == 0
    assert "done" in task_log["logs"][0]["stdout"]  # the log tail, in the FULL view
    [output] = task_log["outputs"]
    assert output["path"] == "/wml/outputs/result.txt" and int(output["size_bytes"]) > 0
    async with httpx.AsyncClient() as anonymous:  # the output's url is the consumer's signed download
        assert b"dummy-job" in (await anonymous.get(output["url"])).content
        assert (await anonymous.get(task_log["metadata"]["log_url"])).status_code == 200

    first = await tes(api, token, "GET", "/tasks", page_size=2, view="BASIC")
    conforms(absolute_spec, "/tasks", "get", first.json())
    assert len(first.json()["tasks"]) == 2 and first.json()["next_page_token"]
    rest = await tes(api, token, "GET", "/tasks", page_size=2, page_token=first.json()["next_page_token"])
    conforms(absolute_spec, "/tasks", "get", rest.json(), minimal=True)
    seen = [t["id"] for t in first.json()["tasks"] + rest.json()["tasks"]]
    assert sorted(seen) == sorted([done["id"], *(j["id"] for j in long)])
    assert "next_page_token" not in rest.json()
    complete = await tes(api, token, "GET", "/tasks", state="COMPLETE")
    assert [t["id"] for t in complete.json()["tasks"]] == [done["id"]]
    tagged = await tes(api, token, "GET", "/tasks", tag_key="wml.asset", tag_value="other-job")
    assert tagged.json() == {"tasks": []}

    canceled = await tes(api, token, "POST", f"/tasks/{long[0]['id']}:cancel")
    assert (canceled.status_code, canceled.json()) == (200, {})
    conforms(absolute_spec, "/tasks/{id}:cancel", "post", canceled.json())
    again = await tes(api, token, "POST", f"/tasks/{long[0]['id']}:cancel")  # idempotent
    assert (again.status_code, again.json()) == (200, {})
    async with asyncio.timeout(60):
        while (await tes(api, token, "GET", f"/tasks/{long[0]['id']}")).json()["state"] != "CANCELED":
            await asyncio.sleep(0.2)
    await tes(api, token, "POST", f"/tasks/{long[1]['id']}:cancel")

    # Another consumer's task is unknown to bob, exactly like one that does not exist; no token: 401.
    for task_id in (done["id"], "j_does_not_exist"):
        refused = await tes(api, bob, "GET", f"/tasks/{task_id}")
        assert refused.status_code == 404
        assert (await tes(api, bob, "POST", f"/tasks/{task_id}:cancel")).status_code == 404
    assert (await tes(api, bob, "GET", "/tasks")).json() == {"tasks": []}
    assert (await api.http.get(f"{BASE}/tasks")).status_code == 401
    assert (await api.http.get(f"{BASE}/service-info")).status_code == 401


DUMMY = {"image": "localhost/wml/dummy-job:1", "command": ["/bin/sh", "/app/entrypoint.sh"]}


@pytest.mark.parametrize(
    ("task", "says"),
    [
        ({"executors": [{**DUMMY, "image": "docker.io/library/alpine"}]}, "not an asset this token may run"),
        ({"executors": [{**DUMMY, "command": ["sh", "-c", "cat /etc/passwd"]}]}, "runs its own command"),
        ({"executors": [DUMMY, DUMMY]}, "at most 1 executor(s) per task"),
        ({"executors": [{**DUMMY, "workdir": "/root"}]}, "workdir is not supported"),
        ({"executors": [{**DUMMY, "stdout": "/wml/outputs/x"}]}, "stdout is not supported"),
        ({"executors": [DUMMY], "tags": {"a": 1}}, "tags must be an object of strings"),
        ({"executors": [DUMMY], "name": "x" * 201}, "at most 200 characters"),
        ({"executors": [{**DUMMY, "env": {"SLEEPTIME": "999999"}}]}, "SLEEPTIME"),
        ({"executors": [{**DUMMY, "env": {"BASH_ENV": "/x"}}]}, "unknown parameters: BASH_ENV"),
        ({"executors": [DUMMY], "resources": {"cpu_cores": 64}}, "CPU cores"),
        ({"executors": [DUMMY], "inputs": [{"path": "/etc/passwd", "content": "x"}]}, "input paths"),
        ({"executors": [DUMMY], "inputs": [{"path": "/wml/inputs/data", "url": "http://x/y"}]}, "come later"),
        ({"executors": [DUMMY], "outputs": [{"path": "/root/.ssh/id_rsa", "url": "x"}]}, "declared ones"),
        ({"executors": []}, "executors is required"),
    ],
)
async def test_a_task_the_asset_does_not_allow_is_a_400_saying_why(
    api: Api, task: dict[str, Any], says: str
) -> None:
    token = await api.consumer("alice")
    resp = await api.http.post(f"{BASE}/tasks", json=task, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 400, resp.text
    assert says in resp.json()["message"]
    assert (await tes(api, token, "GET", "/tasks")).json() == {"tasks": []}  # nothing was created


async def test_a_created_task_answers_as_the_document_says(api: Api, absolute_spec: dict[str, Any]) -> None:
    token = await api.consumer("alice")
    task = {"executors": [{**DUMMY, "env": {"SLEEPTIME": "0"}}], "tags": {"wml.asset": "dummy-job"}}
    resp = await api.http.post(f"{BASE}/tasks", json=task, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    conforms(absolute_spec, "/tasks", "post", resp.json())
    await api.wait_for(token, resp.json()["id"], {"COMPLETE"})


async def test_py_tes_the_ga4gh_client_runs_the_dummy_job_end_to_end(api: Api) -> None:
    token = await api.consumer("alice")
    client = py_tes.HTTPClient(api.url, token=token)  # it appends /ga4gh/tes/v1 itself
    executor = py_tes.Executor(image=DUMMY["image"], command=DUMMY["command"], env={"SLEEPTIME": "0"})
    task = py_tes.Task(
        executors=[executor],
        inputs=[py_tes.Input(path="/wml/inputs/data", content="hello from py-tes\n")],
        outputs=[py_tes.Output(path="/wml/outputs/result.txt", url="wml://files/result")],
    )
    long = py_tes.Task(
        executors=[py_tes.Executor(image=DUMMY["image"], command=DUMMY["command"], env={"SLEEPTIME": "60"})]
    )

    def drive() -> tuple[Any, Any, str]:
        task_id = client.create_task(task)
        done = client.wait(task_id, timeout=60)
        full = client.get_task(task_id, view="FULL")
        long_id = client.create_task(long)
        page = client.list_tasks(view="MINIMAL", page_size=1)
        client.cancel_task(long_id)
        return full, page, long_id if done.state == "COMPLETE" else "not complete"

    full, page, long_id = await asyncio.to_thread(drive)  # py-tes is synchronous (requests)

    assert full.state == "COMPLETE" and "done" in full.logs[0].logs[0].stdout
    [output] = full.logs[0].outputs
    async with httpx.AsyncClient() as anonymous:
        result = (await anonymous.get(output.url)).text
    assert "data first line: hello from py-tes" in result  # the inline input reached the worker
    assert len(page.tasks) == 1 and page.next_page_token
    async with asyncio.timeout(60):
        while (await api.job(token, long_id))["state"] != "CANCELED":  # type: ignore[index]
            await asyncio.sleep(0.2)


async def test_tasks_are_found_by_name_prefix_and_by_tag_as_the_document_says(api: Api) -> None:
    token = await api.consumer("alice")
    created = {}
    for name, tags in [
        ("align-1", {"sample": "a", "run": "7"}),
        ("align-2", {"sample": "b"}),
        ("call%1", {"sample": ""}),
        ("plain", {}),
    ]:
        task = {"name": name, "description": f"{name} step", "tags": tags, "executors": [HOLD]}
        resp = await api.http.post(f"{BASE}/tasks", json=task, headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200, resp.text
        created[name] = resp.json()["id"]

    async def names(**params: Any) -> set[str]:
        found = (await tes(api, token, "GET", "/tasks", view="BASIC", **params)).json()["tasks"]
        return {t["name"] for t in found if "name" in t} | {"?" for t in found if "name" not in t}

    assert await names(name_prefix="align") == {"align-1", "align-2"}
    assert await names(name_prefix="call%") == {"call%1"}
    assert await names(name_prefix="%") == set()  # a prefix is text, never a pattern
    # The document's table: a value must match exactly; an empty value matches any value, not a missing key.
    assert await names(tag_key="sample", tag_value="a") == {"align-1"}
    assert await names(tag_key="sample", tag_value="c") == set()
    assert await names(tag_key="sample") == {"align-1", "align-2", "call%1"}
    assert await names(tag_key=["sample", "run"], tag_value=["a", "7"]) == {"align-1"}
    assert await names(tag_key=["sample", "run"], tag_value=["b", "7"]) == set()
    assert await names(tag_key="wml.asset", tag_value="") == set(created)
    assert await names(tag_key="wml.asset", tag_value="dummy-job", name_prefix="align-2") == {"align-2"}
    got = (await tes(api, token, "GET", f"/tasks/{created['align-1']}", view="BASIC")).json()
    assert (got["name"], got["description"]) == ("align-1", "align-1 step")
    assert got["tags"] == {"sample": "a", "run": "7", "wml.asset": "dummy-job"}
    bob = await api.consumer("bob")  # another consumer's names and tags find nothing of alice's
    assert (await tes(api, bob, "GET", "/tasks", name_prefix="align")).json() == {"tasks": []}
    for task_id in created.values():
        await tes(api, token, "POST", f"/tasks/{task_id}:cancel")


HOLD = {**DUMMY, "env": {"SLEEPTIME": "60"}}


async def run_task(api: Api, token: str, task: dict[str, Any]) -> dict[str, Any]:
    resp = await api.http.post(f"{BASE}/tasks", json=task, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    await api.wait_for(token, resp.json()["id"], {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR"})
    got: dict[str, Any] = (await tes(api, token, "GET", f"/tasks/{resp.json()['id']}", view="FULL")).json()
    return got


def shell(script: str) -> dict[str, Any]:
    return {"image": DUMMY["image"], "command": ["sh", "-c", script]}


async def test_an_asset_that_allows_it_runs_a_tasks_own_executors_in_order(
    api: Api, absolute_spec: dict[str, Any]
) -> None:
    token = await api.consumer("alice", ("shell-job",))
    steps = [shell("echo one > /wml/outputs/result.txt"), shell("echo two >> /wml/outputs/result.txt")]
    done = await run_task(api, token, {"executors": steps, "tags": {"wml.asset": "shell-job"}})
    conforms(absolute_spec, "/tasks/{id}", "get", done)
    assert done["state"] == "COMPLETE", done
    assert [e["command"] for e in done["executors"]] == [s["command"] for s in steps]
    [output] = done["logs"][0]["outputs"]
    async with httpx.AsyncClient() as anonymous:
        assert (await anonymous.get(output["url"])).text == "one\ntwo\n"

    # The first failing executor ends the task: the next one never runs.
    failed = await run_task(
        api, token, {"executors": [shell("exit 3"), shell("echo ran > /wml/outputs/result.txt")]}
    )
    assert failed["state"] == "EXECUTOR_ERROR" and failed["logs"][0]["logs"][0]["exit_code"] == 3
    assert failed["logs"][0]["outputs"] == []

    too_many = {"executors": [shell("true")] * 4}
    resp = await api.http.post(f"{BASE}/tasks", json=too_many, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 400 and "at most 3 executor(s)" in resp.json()["message"]


async def test_a_consumers_own_command_never_gets_a_file_it_names_bound_into_its_sandbox(api: Api) -> None:
    """The local sandbox binds the files the provider's command names by absolute path (its script); a
    consumer's command naming the server's database or secrets must not get them that way."""
    token = await api.consumer("alice", ("shell-job",))
    secret = api.server.settings.data_dir / "provider.key"  # beside the database and generated secrets
    secret.write_text("TOP-SECRET-KEY\n")
    script = f"cat {secret}; cat {secret} > /wml/outputs/result.txt"
    task = {"executors": [{**shell(script), "command": ["sh", "-c", script, str(secret)]}]}
    got = await run_task(api, token, task)
    assert got["state"] == "EXECUTOR_ERROR", got["state"]
    assert "TOP-SECRET-KEY" not in got["logs"][0]["logs"][0].get("stdout", "")
    assert "No such file" in got["logs"][0]["logs"][0].get("stdout", "")


async def test_a_refused_task_leaves_none_of_its_inline_inputs_behind(api: Api) -> None:
    """Inline content becomes a file before the job rules run; a task they refuse must not keep it."""
    token = await api.consumer("alice")
    task = {
        "executors": [{**DUMMY, "env": {"SLEEPTIME": "999999"}}],  # refused by the job rules, after binding
        "inputs": [{"path": "/wml/inputs/data", "content": "kept?"}],
    }
    resp = await api.http.post(f"{BASE}/tasks", json=task, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 400 and "SLEEPTIME" in resp.json()["message"]
    files = await api.data("{ files { edges { node { id name } } } }", token=token)
    assert files["files"]["edges"] == []
