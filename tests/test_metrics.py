"""/metrics exposes the documented series with the right values after a scripted run."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.api import Api, running_api
from tests.support.ws import connect
from wml.client.connector import running_connector


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def _scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await api.http.get("/metrics", headers={"Authorization": "Bearer test-admin-token"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return _samples(resp.text)


async def test_metrics_count_jobs_bytes_subscriptions_operations_and_callbacks(tmp_path: Path) -> None:
    async with (
        running_connector("k") as edc,
        running_api(tmp_path / "data", **edc.provisioner_settings()) as api,
    ):
        before = await _scrape(api)
        assert before[("wml_jobs", (("state", "COMPLETE"),))] == 0

        token = await api.consumer("alice")
        uploaded = await api.upload(token, b"x" * 1000)
        ok = await api.create_job(token, inputs={"data": uploaded["id"]}, parameters={"SLEEPTIME": 0})
        bad = await api.create_job(token, parameters={"SLEEPTIME": 0, "FAIL": 2})
        done = await api.wait_for(token, ok["id"])
        await api.wait_for(token, bad["id"])
        body = (await api.http.get(done["outputs"][0]["downloadUrl"])).content

        body_req = edc.request_body("dummy-job", "tp-metrics", kind="provision")
        assert (await edc.post(f"{api.url}/provision/", body_req)).status_code == 200
        await edc.wait_for_callback("tp-metrics")

        async with connect(api.url, token) as conn:
            await conn.subscribe("subscription { jobEvents { seq state } }")
            for _ in range(50):
                if api.services.bus.subscriber_count:
                    break
                await asyncio.sleep(0.05)
            for _ in range(50):  # the callback outcome is recorded just after the connector answered
                m = await _scrape(api)
                if m.get(("wml_provisioning_callbacks_total", (("outcome", "delivered"),))) == 1:
                    break
                await asyncio.sleep(0.05)

    assert m[("wml_jobs", (("state", "COMPLETE"),))] == 1
    assert m[("wml_jobs", (("state", "EXECUTOR_ERROR"),))] == 1
    assert m[("wml_jobs", (("state", "RUNNING"),))] == 0
    assert m[("wml_jobs_created_total", (("asset", "dummy-job"),))] == 2
    assert m[("wml_job_duration_seconds_count", (("state", "COMPLETE"),))] == 1
    assert m[("wml_job_duration_seconds_count", (("state", "EXECUTOR_ERROR"),))] == 1
    assert m[("wml_job_queue_wait_seconds_count", ())] == 2
    assert m[("wml_bytes_uploaded_total", ())] == 1000
    assert m[("wml_bytes_downloaded_total", ())] == len(body)
    assert m[("wml_active_subscriptions", ())] == 1
    assert m[("wml_provisioning_callbacks_total", (("outcome", "delivered"),))] == 1
    assert m[("wml_provision_requests_total", (("type", "provision"),))] == 1
    assert m[("wml_graphql_operation_seconds_count", (("fields", "createJob"), ("type", "mutation")))] == 2
    assert m[("wml_job_transitions_total", (("reason", "NONZERO_EXIT"), ("state", "EXECUTOR_ERROR")))] == 1


async def test_client_chosen_names_never_become_metric_labels(api: Api) -> None:
    token = await api.consumer("alice")
    await api.gql("query Whatever { definitelyNotAField }", token=token)
    m = await _scrape(api)
    labels = {dict(k[1]).get("fields") for k in m if k[0].startswith("wml_graphql_operation_seconds")}
    assert "definitelyNotAField" not in labels
    assert m[("wml_graphql_operation_seconds_count", (("fields", "-"), ("type", "invalid")))] >= 1


async def test_metrics_include_the_process_the_python_runtime_and_the_build(tmp_path: Path) -> None:
    async with running_api(tmp_path / "data") as api:
        m = await _scrape(api)
    assert m[("process_cpu_seconds_total", ())] > 0
    assert m[("process_resident_memory_bytes", ())] > 0
    assert any(name == "python_gc_objects_collected_total" for name, _ in m)
    assert next(value for (name, _), value in m.items() if name == "python_info") == 1
    build = next(dict(labels) for (name, labels) in m if name == "wml_build_info")
    assert build["version"].startswith("0.") and build["python"].count(".") == 2
