"""``wml watch`` and ``wml demo`` follow a job through the subscriptions, printing state changes and log
lines as they happen (each line is timestamped on arrival here, to tell "live" from "at the end")."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Mapping

from tests.support.api import Api
from wml.demo import pick_workflow


async def _run(*args: str, env: dict[str, str] | None = None) -> tuple[int, list[tuple[float, str]]]:
    """Run ``wml ARGS``, keeping each output line with the time it arrived."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wml.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        # Through a pipe, as `make demo | tee` or CI reads it, and without PYTHONUNBUFFERED (which some
        # shells set): lines must still arrive as they are printed.
        env={**_without(os.environ, "PYTHONUNBUFFERED"), "WML_LOG_LEVEL": "WARNING", **(env or {})},
    )
    assert proc.stdout is not None
    lines = []
    while raw := await asyncio.wait_for(proc.stdout.readline(), 120):
        lines.append((time.monotonic(), raw.decode().rstrip("\n")))
    return await proc.wait(), lines


def _without(env: Mapping[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != name}


def _at(lines: list[tuple[float, str]], text: str) -> float:
    return next(t for t, line in lines if text in line)


async def test_watch_prints_state_changes_and_log_lines_as_they_happen(api: Api) -> None:
    token = await api.consumer("alice")
    # Long enough that `wml watch` (a new Python process, slow to start on a loaded machine) is
    # following before the last progress lines are written.
    created = await api.create_job(token, parameters={"SLEEPTIME": 6})
    code, lines = await _run("watch", created["id"], "--url", api.url, "--token", token)
    text = [line for _, line in lines]
    assert code == 0, text
    states = [
        s for s in ("QUEUED", "INITIALIZING", "RUNNING", "COMPLETE") if any(f"job is {s}" in t for t in text)
    ]
    assert states == ["QUEUED", "INITIALIZING", "RUNNING", "COMPLETE"]
    assert "    | progress 1/6" in text and "    | done" in text
    # The fifth progress line was printed about a second before the job ended, and arrived then: live,
    # not replayed at the end.
    assert _at(lines, "job is COMPLETE") - _at(lines, "progress 5/6") > 0.5


async def test_watch_takes_the_token_from_wml_token_and_fails_for_a_failed_job(api: Api) -> None:
    token = await api.consumer("alice")
    created = await api.create_job(token, parameters={"SLEEPTIME": 0, "FAIL": 3})
    code, lines = await _run("watch", created["id"], "--url", api.url, env={"WML_TOKEN": token})
    assert code == 1
    assert any("job is EXECUTOR_ERROR (NONZERO_EXIT), exit code 3" in line for _, line in lines)


async def test_watch_with_a_bad_token_fails_clearly(api: Api) -> None:
    code, lines = await _run("watch", "j_x", "--url", api.url, "--token", "wml_wrong")
    assert code == 1
    assert any("refused the token" in line for _, line in lines)


async def test_demo_shows_the_jobs_progress_live_and_its_result() -> None:
    code, lines = await _run("demo", "--sleep", "2", "--workflow", "local")
    text = [line for _, line in lines]
    assert code == 0, "\n".join(text)
    for expected in (
        "==> job is QUEUED",
        "==> job is RUNNING",
        "    | progress 1/2",
        "==> job is COMPLETE, exit code 0",
        "==> demo finished: the job is COMPLETE and its result downloaded",
    ):
        assert expected in text, expected
    downloaded = text.index(next(t for t in text if t.startswith("==> downloaded result.txt")))
    assert text[downloaded + 1].startswith("    dummy-job: SLEEPTIME=2")
    assert _at(lines, "job is COMPLETE") - _at(lines, "progress 1/2") > 0.5


def test_the_demo_runs_in_podman_when_the_image_is_built_and_can_stay_local() -> None:
    # make test builds localhost/wml/dummy-job:1 (scripts/podman-setup), so auto finds podman here.
    assert pick_workflow("auto")[0] == "container://podman"
    assert pick_workflow("container")[0] == "container://podman"
    assert pick_workflow("local") == ("local://", "local processes")
