"""Bad and hostile input through the real API: every one gets a clear, typed answer and the server serves on.

Malformed and oversized queries, unknown ids, wrong slots and parameters, dangerous file names, bad paging
arguments, and input archives and env files built to escape or break the job's inputs directory.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

from tests.support.api import Api

UNKNOWN_JOB = "j_00000000000000000000000000000000"
UNKNOWN_FILE = "f_00000000000000000000000000000000"
CREATE_JOB = """mutation($input: CreateJobInput!) { createJob(input: $input) { __typename
  ... on Error { message code } ... on ValidationError { field } ... on NotFoundError { id } } }"""


def assert_no_internals(body: dict[str, Any]) -> None:
    """Error messages are for people: no traceback, no server paths, no masked internal error."""
    text = str(body)
    for leak in ("Traceback", "/work/", 'File "', "Internal error"):
        assert leak not in text, body


async def create_job_raw(api: Api, token: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = await api.gql(CREATE_JOB, {"input": {"assetId": "dummy-job", **spec}}, token=token)
    assert_no_internals(body)
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["createJob"]
    return result


async def upload_named(
    api: Api, token: str, name: str | None, filename: str = "upload.bin"
) -> dict[str, Any]:
    """A multipart upload with the ``name`` argument and the part's own file name set separately."""
    operations = {
        "query": "mutation($file: Upload!, $name: String) { uploadFile(file: $file, name: $name) { __typename"
        " ... on File { id } ... on ValidationError { field } } }",
        "variables": {"file": None, "name": name},
    }
    resp = await api.http.post(
        "/graphql",
        headers={"Authorization": f"Bearer {token}"},
        data={"operations": json.dumps(operations), "map": '{"0": ["variables.file"]}'},
        files={"0": (filename, b"content", "application/octet-stream")},
    )
    body = resp.json()
    assert_no_internals(body)
    result: dict[str, Any] = body["data"]["uploadFile"]
    return result


def stored_objects(api: Api) -> list[Path]:
    root = api.services.settings.data_dir / "files"
    return sorted(p for p in root.rglob("*") if p.is_file())


async def assert_still_serving(api: Api, token: str) -> None:
    assert (await api.data("{ assets { id } }", token=token))["assets"]


# -- malformed and oversized queries ----------------------------------------------------------------------


async def test_a_syntax_error_is_answered_with_errors_and_the_server_keeps_serving(api: Api) -> None:
    token = await api.consumer("alice")
    body = await api.gql("{ jobs { nodes { id }", token=token)
    assert body.get("data") is None
    assert "Syntax Error" in body["errors"][0]["message"]
    assert_no_internals(body)
    unknown_field = await api.gql("{ nope }", token=token)
    assert "nope" in unknown_field["errors"][0]["message"]
    await assert_still_serving(api, token)


def nested_job_query(levels: int) -> str:
    inner = "id"
    for _ in range(levels):
        inner = f"job {{ outputs {{ {inner} }} }}"
    return f'{{ job(id: "{UNKNOWN_JOB}") {{ outputs {{ {inner} }} }} }}'


async def test_an_over_deep_query_is_refused_with_a_depth_error(api: Api) -> None:
    token = await api.consumer("alice")
    assert "errors" not in await api.gql(nested_job_query(3), token=token)
    body = await api.gql(nested_job_query(6), token=token)
    assert body["errors"], body
    assert "depth" in body["errors"][0]["message"]
    assert_no_internals(body)
    await assert_still_serving(api, token)


async def test_a_query_over_the_token_limit_is_refused(api: Api) -> None:
    token = await api.consumer("alice")
    body = await api.gql("{ assets { " + "id " * 3000 + "} }", token=token)
    assert body["errors"], body
    assert "token" in body["errors"][0]["message"].lower()
    assert_no_internals(body)
    await assert_still_serving(api, token)


async def test_a_long_literal_out_of_range_is_a_clear_error_not_an_internal_one(api: Api) -> None:
    token = await api.consumer("alice")
    for literal, expected in (("92233720368547758070", "64-bit"), ("1.5", "integer"), ('"abc"', "integer")):
        body = await api.gql(
            f'mutation {{ createUpload(input: {{name: "x", size: {literal}}}) {{ __typename }} }}',
            token=token,
        )
        assert expected in body["errors"][0]["message"], body
        assert_no_internals(body)
    by_variable = await api.gql(
        'mutation($s: Long) { createUpload(input: {name: "x", size: $s}) { __typename } }',
        {"s": 2**64},
        token=token,
    )
    assert "64-bit" in by_variable["errors"][0]["message"]


MALFORMED_BODIES = {
    "not JSON": (b"{not json", "JSON"),
    "a batch": (b'[{"query": "{ assets { id } }"}]', "Batching"),
    "a query that is not a string": (b'{"query": 5}', "query"),
    "variables that are not an object": (b'{"query": "{ assets { id } }", "variables": "x"}', "variables"),
}


async def test_a_malformed_request_body_is_a_400_bad_request(api: Api) -> None:
    token = await api.consumer("alice")
    for case, (content, reason) in MALFORMED_BODIES.items():
        resp = await api.http.post(
            "/graphql",
            content=content,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert resp.status_code == 400, case
        [error] = resp.json()["errors"]
        assert reason in error["message"], case
        assert error["extensions"]["code"] == "BAD_REQUEST", case
    await assert_still_serving(api, token)


UPLOAD_OPERATIONS = json.dumps(
    {
        "query": "mutation($file: Upload!) { uploadFile(file: $file) { __typename"
        " ... on ValidationError { field code } } }",
        "variables": {"file": None},
    }
)


BAD_MAPS = {
    "a list": '["variables.file"]',
    "a path that is not a list": '{"0": "variables.file"}',
    "a path through a leaf": '{"0": ["variables.file.deeper.still"]}',
    "a number as path": '{"0": [1]}',
}


async def test_a_multipart_map_that_does_not_fit_is_a_400_not_a_crash(api: Api) -> None:
    token = await api.consumer("alice")
    for case, files_map in BAD_MAPS.items():
        resp = await api.http.post(
            "/graphql",
            headers={"Authorization": f"Bearer {token}"},
            data={"operations": UPLOAD_OPERATIONS, "map": files_map},
            files={"0": ("a.txt", b"abc", "text/plain")},
        )
        assert resp.status_code == 400, (case, resp.text)
        assert resp.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST", case
    assert stored_objects(api) == []
    await assert_still_serving(api, token)


async def test_a_form_field_in_place_of_the_file_is_a_validation_error(api: Api) -> None:
    token = await api.consumer("alice")
    resp = await api.http.post(
        "/graphql",
        headers={"Authorization": f"Bearer {token}"},
        data={"operations": UPLOAD_OPERATIONS, "map": '{"0": ["variables.file"]}'},
        files={"0": (None, b"not a file part")},
    )
    body = resp.json()
    assert_no_internals(body)
    assert body["data"]["uploadFile"] == {
        "__typename": "ValidationError",
        "field": "file",
        "code": "VALIDATION",
    }
    assert stored_objects(api) == []


async def test_a_content_type_that_is_not_a_media_type_is_refused(api: Api) -> None:
    token = await api.consumer("alice")
    for content_type in ("text/html\r\nX-Evil: 1", "text", "a/b/c", "text/plain; x", "x" * 300 + "/y"):
        data = await api.data(
            'mutation($type: String) { createUpload(input: {name: "x.html", contentType: $type}) { __typename'
            " ... on ValidationError { field } } }",
            {"type": content_type},
            token=token,
        )
        assert data["createUpload"] == {"__typename": "ValidationError", "field": "contentType"}, content_type


# -- unknown ids -------------------------------------------------------------------------------------------


async def test_unknown_ids_are_null_or_not_found(api: Api) -> None:
    token = await api.consumer("alice")
    data = await api.data(
        "query($j: ID!, $f: ID!) { job(id: $j) { id } file(id: $f) { id } }",
        {"j": UNKNOWN_JOB, "f": UNKNOWN_FILE},
        token=token,
    )
    assert data == {"job": None, "file": None}
    not_found = "__typename ... on NotFoundError { id code }"
    for mutation, ident in (
        ("cancelJob", UNKNOWN_JOB),
        ("deleteJob", UNKNOWN_JOB),
        ("deleteFile", UNKNOWN_FILE),
    ):
        answer = await api.data(
            f"mutation($id: ID!) {{ {mutation}(id: $id) {{ {not_found} }} }}",
            {"id": ident},
            token=token,
        )
        assert answer[mutation] == {"__typename": "NotFoundError", "id": ident, "code": "NOT_FOUND"}
    weird = await api.data('{ job(id: "../../etc/passwd\\u0000") { id } }', token=token)
    assert weird == {"job": None}


# -- input slots -------------------------------------------------------------------------------------------


async def test_an_unknown_input_slot_is_a_validation_error_on_inputs(api: Api) -> None:
    token = await api.consumer("alice")
    uploaded = await api.upload(token, b"data")
    result = await create_job_raw(api, token, {"inputs": [{"slot": "nope", "fileId": uploaded["id"]}]})
    assert (result["__typename"], result["field"]) == ("ValidationError", "inputs")
    assert "nope" in result["message"]


async def test_a_slot_bound_twice_is_a_validation_error_on_inputs(api: Api) -> None:
    token = await api.consumer("alice")
    first = await api.upload(token, b"one")
    second = await api.upload(token, b"two")
    result = await create_job_raw(
        api,
        token,
        {"inputs": [{"slot": "data", "fileId": first["id"]}, {"slot": "data", "fileId": second["id"]}]},
    )
    assert (result["__typename"], result["field"]) == ("ValidationError", "inputs")
    assert "twice" in result["message"]


async def test_a_missing_required_slot_is_a_validation_error_on_inputs(api: Api) -> None:
    token = await api.consumer("carol", ("small-input",))
    result = await api.create_job(token, "small-input", parameters={"SLEEPTIME": 0})
    assert (result["__typename"], result["field"]) == ("ValidationError", "inputs")
    assert "data" in result["message"]


async def test_an_unknown_input_file_is_not_found(api: Api) -> None:
    token = await api.consumer("alice")
    result = await create_job_raw(api, token, {"inputs": [{"slot": "data", "fileId": UNKNOWN_FILE}]})
    assert (result["__typename"], result["id"]) == ("NotFoundError", UNKNOWN_FILE)


async def test_a_file_whose_bytes_never_arrived_cannot_be_an_input(api: Api) -> None:
    token = await api.consumer("alice")
    ticket = await api.data(
        'mutation { createUpload(input: {name: "x"}) { ... on UploadTicket { fileId } } }', token=token
    )
    pending = ticket["createUpload"]["fileId"]
    result = await create_job_raw(api, token, {"inputs": [{"slot": "data", "fileId": pending}]})
    assert (result["__typename"], result["id"]) == ("NotFoundError", pending)


async def test_a_file_larger_than_its_slot_is_a_validation_error_on_inputs(api: Api) -> None:
    token = await api.consumer("alice")
    uploaded = await api.upload(token, b"SOURCE=x\n" * 8000, "big.env")  # the config slot takes 64 KiB
    result = await create_job_raw(api, token, {"inputs": [{"slot": "config", "fileId": uploaded["id"]}]})
    assert (result["__typename"], result["field"]) == ("ValidationError", "inputs")
    assert "65536" in result["message"]


# -- parameters --------------------------------------------------------------------------------------------


INVALID_PARAMETERS = {
    "an unknown name": ({"NAME": 1}, "parameters.NAME"),
    "a string for an integer": ({"SLEEPTIME": "5"}, "parameters.SLEEPTIME"),
    "a fraction for an integer": ({"SLEEPTIME": 1.5}, "parameters.SLEEPTIME"),
    "a boolean for an integer": ({"SLEEPTIME": True}, "parameters.SLEEPTIME"),
    "an object for an integer": ({"SLEEPTIME": {"nested": 1}}, "parameters.SLEEPTIME"),
    "below the minimum": ({"SLEEPTIME": -1}, "parameters.SLEEPTIME"),
    "above the maximum": ({"FAIL": 256}, "parameters.FAIL"),
    "a huge integer": ({"SLEEPTIME": 10**30}, "parameters.SLEEPTIME"),
    "a list": ([1, 2], "parameters"),
    "a string": ("SLEEPTIME=0", "parameters"),
    "a number": (7, "parameters"),
}


async def test_invalid_parameters_are_a_validation_error_naming_the_parameter(api: Api) -> None:
    token = await api.consumer("alice")
    for case, (parameters, field) in INVALID_PARAMETERS.items():
        result = await create_job_raw(api, token, {"parameters": parameters})
        assert (result["__typename"], result["field"]) == ("ValidationError", field), (case, result)
    assert (await api.data("{ jobs { nodes { id } } }", token=token))["jobs"]["nodes"] == []


# -- file names --------------------------------------------------------------------------------------------

BAD_NAMES = [
    "../x",
    "a/b",
    "a\\b",
    "nul\x00byte",
    "..",
    ".",
    "bell\x07",
    "new\nline",
    "",
    "   ",
    "x" * 256,
    "é" * 128,
]


async def test_a_dangerous_file_name_is_refused_and_nothing_is_stored(api: Api) -> None:
    token = await api.consumer("alice")
    for name in BAD_NAMES:
        uploaded = await upload_named(api, token, name)
        assert uploaded == {"__typename": "ValidationError", "field": "name"}, name
        announced = await api.data(
            "mutation($name: String!) { createUpload(input: {name: $name}) { __typename"
            " ... on ValidationError { field } } }",
            {"name": name},
            token=token,
        )
        assert announced["createUpload"] == {"__typename": "ValidationError", "field": "name"}, name
    assert (await api.data("{ files { nodes { id } } }", token=token))["files"]["nodes"] == []
    assert stored_objects(api) == []


async def test_without_a_name_argument_the_parts_file_name_is_checked_the_same_way(api: Api) -> None:
    token = await api.consumer("alice")
    refused = await upload_named(api, token, None, filename="../../etc/passwd")
    assert refused == {"__typename": "ValidationError", "field": "name"}
    accepted = await upload_named(api, token, None, filename="report.txt")
    assert accepted["__typename"] == "File"
    assert (await api.data("{ files { nodes { name } } }", token=token))["files"]["nodes"] == [
        {"name": "report.txt"}
    ]


async def test_a_name_of_255_bytes_is_accepted(api: Api) -> None:
    token = await api.consumer("alice")
    uploaded = await api.upload(token, b"content", "x" * 251 + ".txt")
    assert uploaded["__typename"] == "File"


# -- paging arguments --------------------------------------------------------------------------------------


async def test_a_page_size_out_of_range_is_an_error(api: Api) -> None:
    token = await api.consumer("alice")
    for first in (0, -1, 101, 1000):
        for connection in ("jobs", "files"):
            body = await api.gql(
                f"query($n: Int) {{ {connection}(first: $n) {{ nodes {{ id }} }} }}",
                {"n": first},
                token=token,
            )
            assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", (connection, first)
            assert "first" in body["errors"][0]["message"]
            assert_no_internals(body)


GARBAGE_CURSORS = ["garbage!", "bm90LWEtY3Vyc29y", "eHx5", "", "=" * 10, "\u00e9\u00e9", "//79/w", "A" * 5000]


async def test_a_garbage_cursor_is_an_error_not_a_crash(api: Api) -> None:
    token = await api.consumer("alice")
    await api.upload(token, b"one file")
    for cursor in GARBAGE_CURSORS:
        for connection in ("jobs", "files"):
            body = await api.gql(
                f"query($c: String) {{ {connection}(after: $c) {{ nodes {{ id }} }} }}",
                {"c": cursor},
                token=token,
            )
            assert_no_internals(body)
            assert body["errors"][0]["extensions"]["code"] == "VALIDATION", (connection, cursor, body)
            assert "cursor" in body["errors"][0]["message"]
    # A well-formed cursor that points past everything is just an empty page.
    past = await api.data(
        '{ files(after: "MjAwMC0wMS0wMVQwMDowMDowMCswMDowMHxh") { nodes { id } } }', token=token
    )
    assert past["files"]["nodes"] == []
    await assert_still_serving(api, token)


def cursor_at(stamp: str) -> str:
    return base64.urlsafe_b64encode(f"{stamp}|x".encode()).decode().rstrip("=")


async def test_a_cursor_whose_time_leaves_the_calendar_in_utc_is_an_error(api: Api) -> None:
    token = await api.consumer("alice")
    for stamp in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"):
        for connection in ("jobs", "files"):
            body = await api.gql(
                f"query($c: String) {{ {connection}(after: $c) {{ nodes {{ id }} }} }}",
                {"c": cursor_at(stamp)},
                token=token,
            )
            assert_no_internals(body)
            assert body["errors"][0]["extensions"]["code"] == "VALIDATION", (connection, stamp, body)


# -- hostile inputs at stage-in ----------------------------------------------------------------------------


def tar_with(member: tarfile.TarInfo, content: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.addfile(member, io.BytesIO(content) if content else None)
    return buffer.getvalue()


def traversing_tar() -> bytes:
    member = tarfile.TarInfo("../evil")
    member.size = 5
    return tar_with(member, b"pwned")


def absolute_zip(target: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr(zipfile.ZipInfo(str(target)), b"pwned")
    return buffer.getvalue()


def symlink_tar() -> bytes:
    member = tarfile.TarInfo("passwd")
    member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return tar_with(member)


def hardlink_tar() -> bytes:
    member = tarfile.TarInfo("passwd")
    member.type, member.linkname = tarfile.LNKTYPE, "/etc/passwd"
    return tar_with(member)


async def test_hostile_inputs_fail_staging_and_write_nothing_outside(api: Api, tmp_path: Path) -> None:
    token = await api.consumer("alice")
    absolute_target = tmp_path / "evil-absolute"
    cases = {
        "traversal": ("bundle", traversing_tar(), "'..'"),
        "absolute": ("bundle", absolute_zip(absolute_target), "absolute path"),
        "symlink": ("bundle", symlink_tar(), "symbolic link"),
        "hardlink": ("bundle", hardlink_tar(), "hard link"),
        "not-an-archive": ("bundle", b"just some text", "not a zip or tar"),
    }  # (a bad env file is refused by createJob already: test_api_env_inputs.py)
    jobs = {}
    for case, (slot, content, _) in cases.items():
        uploaded = await api.upload(token, content, f"{case}.bin")
        created = await api.create_job(token, inputs={slot: uploaded["id"]}, parameters={"SLEEPTIME": 0})
        assert created["__typename"] == "Job", created
        jobs[case] = created["id"]

    for case, job_id in jobs.items():
        job = await api.wait_for(token, job_id)
        expected = cases[case][2]
        assert (job["state"], job["reason"]) == ("SYSTEM_ERROR", "INPUT_STAGING_FAILED"), (case, job)
        assert expected in job["message"], (case, job["message"])
        assert job["outputs"] == []
        assert "/work/" not in job["message"]

    assert not absolute_target.exists()
    assert [p for p in tmp_path.rglob("*evil*") if p != absolute_target] == []
    for job_id in jobs.values():
        inputs = api.services.settings.jobs_dir() / job_id / "inputs"
        assert not (inputs / "passwd").exists()
        assert not (inputs / "bundle").exists()

    normal = await api.upload(token, b"a fine line\n", "fine.txt")
    created = await api.create_job(token, inputs={"data": normal["id"]}, parameters={"SLEEPTIME": 0})
    finished = await api.wait_for(token, created["id"])
    assert finished["state"] == "COMPLETE", finished


async def test_a_valid_archive_and_env_file_still_run(api: Api) -> None:
    token = await api.consumer("alice")
    member = tarfile.TarInfo("dir/hello.txt")
    member.size = 5
    bundle = await api.upload(token, tar_with(member, b"hello"), "bundle.tar")
    config = await api.upload(token, b"# settings\nexport SOURCE='in'\nDESTINATION=out # comment\n", "c.env")
    created = await api.create_job(
        token, inputs={"bundle": bundle["id"], "config": config["id"]}, parameters={"SLEEPTIME": 0}
    )
    job = await api.wait_for(token, created["id"])
    assert job["state"] == "COMPLETE", job
    assert "dir/hello.txt" in job["logTail"]
    assert "SOURCE=in" in job["logTail"] and "DESTINATION=out" in job["logTail"]
