"""Namespace-per-consumer isolation: created with a quota and a default-deny policy on the consumer's first
submit, watched with the others by one watch, deleted when the consumer has no job left."""

from __future__ import annotations

import asyncio
from pathlib import Path

from backends.storage.file import FileStorageBackend
from backends.workflow.base import RunPhase
from backends.workflow.kubernetes.manifests import RBAC_NEEDS, SELECTOR
from tests.support.kube_backend import fake_kube

EGRESS = ({"to": [{"ipBlock": {"cidr": "10.0.0.5/32"}}], "ports": [{"protocol": "TCP", "port": 9000}]},)
QUOTA = {"pods": "3", "limits.memory": "4Gi"}


async def test_each_consumer_gets_its_own_namespace_deleted_with_its_last_job(
    tmp_path: Path, storage: FileStorageBackend, make_run
) -> None:
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube:
        backend = kube.backend(
            storage, namespace_per_consumer=True, namespace_quota=QUOTA, egress_allow=EGRESS
        )
        await backend.start()
        try:
            stream = backend.updates()
            first = await backend.submit(make_run(consumer_id="c1"))
            second = await backend.submit(make_run(consumer_id="c1"))
            other = await backend.submit(make_run(consumer_id="c2"))
            assert {r.split("/")[0] for r in (first, second, other)} == {"wml-jobs-c1", "wml-jobs-c2"}
            state = kube.api.state
            assert kube.api.count("POST", "namespaces") == 2
            namespace = state.get("namespaces", None, "wml-jobs-c1")
            assert namespace is not None
            assert namespace["metadata"]["labels"] == {
                "app.kubernetes.io/managed-by": "workflow-middlelayer",
                "wml/consumer-id": "c1",
            }
            [quota] = state.select("resourcequotas", "wml-jobs-c1")
            assert quota["spec"]["hard"] == QUOTA
            [policy] = state.select("networkpolicies", "wml-jobs-c1")
            assert policy["spec"]["podSelector"] == {}
            assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
            assert (policy["spec"]["ingress"], policy["spec"]["egress"]) == ([], list(EGRESS))

            # One watch over all namespaces sees every consumer's Pods.
            for ref in (first, other):
                await kube.cluster.step(ref, "working")
            running = set()
            async with asyncio.timeout(5):
                while running != {first, other}:
                    update = await anext(stream)
                    if update.phase == RunPhase.RUNNING:
                        running.add(update.ref)
            assert kube.api.count("WATCH", "pods") == 1
            assert [c.namespace for c in kube.api.requests if c.method == "WATCH"] == [None]

            await backend.cleanup(first)
            assert state.get("namespaces", None, "wml-jobs-c1") is not None  # c1 still has a job
            await backend.cleanup(second)
            await backend.cleanup(other)
            assert state.get("namespaces", None, "wml-jobs-c1") is None
            assert state.labelled(SELECTOR) == [] and state.select("resourcequotas") == []
            granted = {(resource, verb) for _, resource, verbs in RBAC_NEEDS for verb in verbs}
            assert kube.verbs_used() <= granted
        finally:
            await backend.close()


async def test_a_namespace_still_terminating_is_waited_for_and_created_anew(
    tmp_path: Path, storage: FileStorageBackend, make_run
) -> None:
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube:
        kube.api.state.namespace_termination = 0.3
        backend = kube.backend(storage, namespace_per_consumer=True)
        await backend.start()
        try:
            ref = await backend.submit(make_run(consumer_id="c1"))
            await backend.cleanup(ref)
            terminating = kube.api.state.get("namespaces", None, "wml-jobs-c1")
            assert terminating is not None and terminating["status"]["phase"] == "Terminating"

            again = await backend.submit(make_run(consumer_id="c1"))
            namespace = kube.api.state.get("namespaces", None, "wml-jobs-c1")
            assert namespace is not None and namespace["status"]["phase"] == "Active"
            assert kube.api.state.get("jobs", "wml-jobs-c1", again.split("/")[1]) is not None
            assert len(kube.api.state.select("resourcequotas", "wml-jobs-c1")) == 1
        finally:
            await backend.close()


async def test_the_sweep_removes_a_consumer_namespace_left_without_jobs(
    tmp_path: Path, storage: FileStorageBackend, make_run
) -> None:
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube:
        state = kube.api.state
        labels = {"app.kubernetes.io/managed-by": "workflow-middlelayer", "wml/consumer-id": "gone"}
        state.create("namespaces", None, {"metadata": {"name": "wml-jobs-gone", "labels": labels}})
        backend = kube.backend(storage, namespace_per_consumer=True)
        await backend.start()
        try:
            live = await backend.submit(make_run(consumer_id="c1"))
            await backend.reconcile([live])

            assert state.get("namespaces", None, "wml-jobs-gone") is None
            assert state.get("namespaces", None, "wml-jobs-c1") is not None
            assert state.get("namespaces", None, "wml-jobs") is not None  # not ours: no label
        finally:
            await backend.close()
