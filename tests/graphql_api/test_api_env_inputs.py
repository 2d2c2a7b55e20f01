"""Env inputs are data for the job, never configuration of its runtime.

``createJob`` reads the env file (at most 64 KiB of it) and refuses, naming the key, any key its slot does
not list (the dummy job's ``config`` slot takes SOURCE and DESTINATION): loader, shell and interpreter
variables, the slot contract's WML_* names, and a parameter (which would bypass its validation: SLEEPTIME
has a maximum of 86400); values must be plain bounded text. Nothing is created for a refused request.
"""

from __future__ import annotations

from tests.support.api import Api

REFUSED = {
    "BASH_ENV": b"SOURCE=in\nBASH_ENV=/wml/inputs/config.env\n",
    "PYTHONPATH": b"PYTHONPATH=/tmp/evil\n",
    "LD_PRELOAD": b"export LD_PRELOAD=/tmp/evil.so\n",
    "NODE_OPTIONS": b"NODE_OPTIONS='--require /tmp/evil.js'\n",
    "JAVA_TOOL_OPTIONS": b"JAVA_TOOL_OPTIONS=-javaagent:/tmp/evil.jar\n",
    "PERL5OPT": b"PERL5OPT=-Mevil\n",
    "GCONV_PATH": b"GCONV_PATH=/tmp\n",
    "IFS": b"IFS=/\n",
    "SLEEPTIME": b"SLEEPTIME=999999\n",  # a parameter, above its maximum
    "WML_OUTPUTS_DIR": b"WML_OUTPUTS_DIR=/etc\n",
    "PATH": b"PATH=/tmp\n",
}
INVALID = {
    "a NUL in a value": (b"SOURCE=a\x00b\n", "line 1: the value contains a NUL"),
    "a value too long": (b"SOURCE=" + b"x" * 5000 + b"\n", "line 1: the value is longer than 4096"),
    "a line that is no assignment": (b"SOURCE=ok\nthis line is not an assignment\n", "line 2"),
    "a key that is no name": (b"1BAD=x\n", "line 1"),
}


async def test_env_files_setting_what_their_slot_does_not_accept_are_refused_at_create_job(api: Api) -> None:
    token = await api.consumer("alice")
    cases = {key: (content, f"keys not accepted by this slot: {key} ") for key, content in REFUSED.items()}
    for case, (content, expected) in {**cases, **INVALID}.items():
        uploaded = await api.upload(token, content, "config.env")
        created = await api.create_job(token, inputs={"config": uploaded["id"]}, parameters={"SLEEPTIME": 0})

        assert (created["__typename"], created["field"]) == ("ValidationError", "inputs"), (case, created)
        assert expected in created["message"], (case, created["message"])
        assert "/tmp" not in created["message"] and "999999" not in created["message"]  # never a value
    jobs = await api.data("{ jobs(first: 10) { edges { node { id } } } }", token=token)
    assert jobs["jobs"]["edges"] == []


async def test_an_env_file_with_the_keys_its_slot_accepts_reaches_the_worker(api: Api) -> None:
    token = await api.consumer("alice")
    config = await api.upload(token, b"SOURCE=s3://in\nexport DESTINATION='out dir'\n", "config.env")
    created = await api.create_job(token, inputs={"config": config["id"]}, parameters={"SLEEPTIME": 0})

    job = await api.wait_for(token, created["id"])
    assert job["state"] == "COMPLETE", job
    assert "SOURCE=s3://in" in job["logTail"] and "DESTINATION=out dir" in job["logTail"]
