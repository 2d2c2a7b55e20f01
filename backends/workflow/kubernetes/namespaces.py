"""Namespace-per-consumer isolation (``WML_K8S_NAMESPACE_PER_CONSUMER``).

Each consumer's jobs run in their own namespace ``<prefix>-<consumer>``, created on the consumer's first
submit (the backend does not see grants being provisioned) with a ResourceQuota (``WML_K8S_NAMESPACE_QUOTA``)
and a NetworkPolicy that denies all ingress and all egress except the rules in ``WML_K8S_EGRESS_ALLOW``
(the storage endpoint and DNS, typically). It is deleted when the consumer has no Job left in it: after a
cleanup, and by the orphan sweep. Submits and deletes of one namespace are serialized in this process; a
namespace still terminating from an earlier delete is waited for, then created anew.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator

import structlog

from backends.backoff import backoff
from backends.workflow.base import WorkflowBackendError
from backends.workflow.kubernetes.api import KubeApi, KubeConflictError
from backends.workflow.kubernetes.config import KubernetesOptions
from backends.workflow.kubernetes.manifests import (
    SELECTOR,
    dns_name,
    namespace_manifest,
    network_policy_manifest,
    resource_quota_manifest,
)

log = structlog.get_logger("wml.workflow.kubernetes")

_TERMINATING_WAIT = 120.0  # seconds a namespace may take to finish terminating before submit gives up


class ConsumerNamespaces:
    def __init__(self, api: KubeApi, options: KubernetesOptions) -> None:
        self._api = api
        self._options = options
        self._ready: set[str] = set()  # created (or found) by this process and not deleted since
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._busy: defaultdict[str, int] = defaultdict(int)  # submits in progress per namespace

    def name(self, consumer_id: str) -> str:
        return dns_name(self._options.namespace, consumer_id)

    @contextlib.asynccontextmanager
    async def using(self, consumer_id: str) -> AsyncIterator[str]:
        """The consumer's namespace, existing and ready, while a submit creates objects in it."""
        namespace = self.name(consumer_id)
        async with self._locks[namespace]:
            if namespace not in self._ready:
                await self._create(namespace, consumer_id)
                self._ready.add(namespace)
            self._busy[namespace] += 1
        try:
            yield namespace
        finally:
            self._busy[namespace] -= 1

    async def release_if_empty(self, namespace: str) -> bool:
        """Delete the namespace when no Job of ours is left in it; True when it was deleted."""
        async with self._locks[namespace]:
            if self._busy[namespace] or await self._api.exists("Job", namespace, SELECTOR):
                return False
            self._ready.discard(namespace)
            deleted = await self._api.delete("Namespace", None, namespace)
        if deleted:
            log.info("kubernetes_namespace_deleted", namespace=namespace)
        return deleted

    async def _create(self, namespace: str, consumer_id: str) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + _TERMINATING_WAIT
        retry = 0
        while True:
            try:
                await self._api.create("Namespace", None, namespace_manifest(namespace, consumer_id))
                log.info("kubernetes_namespace_created", namespace=namespace)
                break
            except KubeConflictError:
                existing = await self._api.get("Namespace", None, namespace)
                if existing is not None and (existing.get("status") or {}).get("phase") != "Terminating":
                    break
            if loop.time() > give_up:
                raise WorkflowBackendError(f"namespace {namespace} is still terminating; try again later")
            retry += 1
            await asyncio.sleep(backoff(retry, base=0.2, cap=5.0))
        quota = resource_quota_manifest(namespace, self._options.namespace_quota)
        policy = network_policy_manifest(namespace, [dict(rule) for rule in self._options.egress_allow])
        for kind, body in (("ResourceQuota", quota), ("NetworkPolicy", policy)):
            with contextlib.suppress(KubeConflictError):
                await self._api.create(kind, namespace, body)
