"""Prometheus metrics of the service, in one registry per service instance.

Counters and histograms are observed where things happen (supervisor, file service, provisioner,
GraphQL); the gauges that describe stored state (jobs by state) are read from the database when
``/metrics`` is scraped, so every replica reports the same truth. Beside them: the process (CPU, memory,
open files) and the Python runtime (version, garbage collection), and ``wml_build_info`` with the
version running, for dashboards that compare replicas during an upgrade.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

DURATION_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)  # process_*, python_info, python_gc_*: stateless, shared by registries
        build = Gauge("wml_build_info", "The running build (always 1).", ["version", "python"], registry=r)
        build.labels(version=build_version(), python=platform.python_version()).set(1)
        self.jobs = Gauge(
            "wml_jobs", "Jobs by state (from the database, at scrape time).", ["state"], registry=r
        )
        self.jobs_created = Counter("wml_jobs_created", "Jobs created.", ["asset"], registry=r)
        self.job_transitions = Counter(
            "wml_job_transitions",
            "Job state changes by target state and reason.",
            ["state", "reason"],
            registry=r,
        )
        self.job_duration = Histogram(
            "wml_job_duration_seconds",
            "Run time of ended jobs (start to end).",
            ["state"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "wml_job_queue_wait_seconds",
            "Time from createJob until the worker started.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.api_latency = Histogram(
            "wml_graphql_operation_seconds",
            "GraphQL operation latency by operation type and root fields.",
            ["type", "fields"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.subscriptions = Gauge("wml_active_subscriptions", "Open GraphQL subscriptions.", registry=r)
        self.bytes_uploaded = Counter("wml_bytes_uploaded", "Bytes received through the API.", registry=r)
        self.bytes_downloaded = Counter("wml_bytes_downloaded", "Bytes served through the API.", registry=r)
        self.callbacks = Counter(
            "wml_provisioning_callbacks",
            "Provisioning callbacks to the connector by outcome.",
            ["outcome"],
            registry=r,
        )
        self.provision_requests = Counter(
            "wml_provision_requests", "Provision requests from the connector by type.", ["type"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def build_version() -> str:
    try:
        return version("workflow-middlelayer")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"
