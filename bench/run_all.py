"""Run every benchmark, then regenerate the results table in ``bench/README.md`` from their JSON.

Each benchmark runs as its own process with the workload sized for ``make bench`` (under ten minutes on 2
cores); ``--only`` runs a subset and ``--table-only`` just rebuilds the table from ``bench/results/``.
The table sits between the two markers in ``bench/README.md``; the rest of that file is left alone.
``transfer`` needs about 4 GiB of free disk for its 1 GiB files.

Usage: ``.venv/bin/python bench/run_all.py [--only api_overhead,job_overhead,fanout] [--table-only]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "bench" / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
# result name -> (script, arguments): the workload make bench runs.
BENCHMARKS: dict[str, tuple[str, list[str]]] = {
    "api_overhead": ("api_overhead", ["--clients", "16", "--seconds", "8"]),
    "job_overhead": ("job_overhead", ["--jobs", "200", "--concurrency", "4"]),
    # Quiet subscriptions' grant re-checks are now one shared read per grant (core.live.shared_reads), so the
    # former fanout_recheck600 variant (re-checks every 10 minutes) measured nothing different any more.
    "fanout": ("fanout", ["--subscribers", "1000,5000,10000", "--events", "10"]),
    # 1,000 jobs take about 3 minutes on a quiet 2-core machine (`--jobs 1000`); 500 keep make bench short.
    "kube_control_plane": ("kube_control_plane", ["--jobs", "500"]),
    "transfer": ("transfer", ["--sizes", "100M,1G", "--backends", "file,s3"]),
    "replicas": ("replicas", ["--jobs", "120", "--concurrency", "8", "--replicas", "1,2,3"]),
}


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def verdict(met: bool, by: str) -> str:
    return "met" if met else f"missed ({by})"


def row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def api_rows(doc: dict[str, Any]) -> list[str]:
    rows = []
    s = doc["settings"]
    for kind, label in (("job_query", "`job(id)` query"), ("create_job", "`createJob` mutation")):
        g, b = doc["graphql"][kind], doc["bare"][kind]
        ratio = doc["ratio_graphql_over_bare"][kind]
        rows.append(
            row(
                f"API overhead: {label}",
                f"{s['clients']} clients, {s['seconds']:g} s",
                f"{g['rps']:.0f} req/s, p50 {g['p50_ms']:.0f} ms, p99 {g['p99_ms']:.0f} ms",
                f"bare Starlette + Store: {b['rps']:.0f} req/s, p50 {b['p50_ms']:.0f} ms,"
                f" p99 {b['p99_ms']:.0f} ms",
                f"{ratio:.2f} (req/s)",
                f"ratio >= 0.5: {verdict(ratio >= 0.5, f'{ratio / 0.5:.0%} of target')}",
            )
        )
    return rows


def job_rows(doc: dict[str, Any]) -> list[str]:
    s, d, cfg = doc["service"], doc["direct_spawn"], doc["settings"]
    median = s["overhead"]["p50_ms"]
    phases = ", ".join(
        f"{name.replace('_', ' ')} {s[name]['p50_ms']:.0f}"
        for name in ("queued_to_initializing", "initializing_to_running", "running_to_complete")
    )
    return [
        row(
            "Job overhead (local backend, `true`)",
            f"{s['completed']} of {cfg['jobs']} jobs, {cfg['concurrency']} in flight",
            f"overhead p50 {median:.0f} ms, p90 {s['overhead']['p90_ms']:.0f} ms;"
            f" {s['jobs_per_second']:.1f} jobs/s; phases p50 (ms): {phases}",
            f"direct `subprocess.run`: {d['p50_ms']:.1f} ms, {d['jobs_per_second']:.0f} jobs/s",
            f"{doc['ratio_jobs_per_second_service_over_direct']:.3f} (jobs/s)",
            f"median < 50 ms: {verdict(median < 50, f'{median / 50:.1f}x the target')}",
        )
    ]


def fanout_rows(doc: dict[str, Any]) -> list[str]:
    rows = []
    for run in doc["runs"]:
        s, b = run["service"], run["bare"]
        every, bare_every = s["to_every_subscriber"], b["to_every_subscriber"]
        p99, kib = every["p99_ms"], s["kib_per_idle_subscriber"]
        kb = kib * 1.024
        settings = doc["settings"].get("server_settings") or {}
        label = "Subscription fan-out (`jobEvents`)" + "".join(f", {k}={v}" for k, v in settings.items())
        rows.append(
            row(
                label,
                f"{run['subscribers']} subscribers, {doc['settings']['events']} jobs"
                + (f" ({run['seconds']:.0f} s)" if "seconds" in run else ""),
                f"to every subscriber p50 {every['p50_ms']:.0f} ms, p99 {p99:.0f} ms"
                f" ({s['events_delivered_to_all']}/{s['events']} events to all); {kib:.0f} KiB per idle"
                " subscriber",
                f"bare `websockets` broadcast: p50 {bare_every['p50_ms']:.0f} ms, p99"
                f" {bare_every['p99_ms']:.0f} ms; {b['kib_per_idle_subscriber']:.0f} KiB",
                f"{run['ratio_p99_to_every_service_over_bare']:.1f}x (p99, lower is better)",
                f"p99 < 500 ms: {verdict(p99 < 500, f'{p99 / 500:.1f}x')}; < 50 KB:"
                f" {verdict(kb < 50, f'{kb / 50:.1f}x')}",
            )
        )
    return rows


def kube_rows(doc: dict[str, Any]) -> list[str]:
    run, base = doc["run"], doc["baseline"]
    kinds = ", ".join(f"{kind} {per_job:.2f}" for kind, per_job in run["by_kind_per_job"].items())
    ratio = doc["ratio_requests_per_job_full_over_baseline"]
    steady = doc.get("ratio_without_lists", ratio)
    scale = "" if run["jobs"] >= 1000 else " (1,000 with `--jobs 1000`)"
    return [
        row(
            "Kubernetes control plane (fake API server, test settings)",
            f"{run['jobs']} jobs{scale}, dummy-job SLEEPTIME=0, reconcile every 1 s",
            f"{run['requests_per_job']:.2f} API requests per job, {run.get('per_job_without_lists', 0):.2f}"
            f" without reconcile's lists ({kinds}); {run['watch_requests_whole_run']} watch requests in the"
            f" whole run; {run.get('jobs_without_log', 0)} jobs without their log; {run['elapsed_s']:.0f} s",
            f"{base['jobs']} jobs in the same run: {base['requests_per_job']:.2f} requests per job",
            f"{ratio:.2f} (requests per job), {steady:.2f} without the lists",
            "small constant per job, no polling:"
            f" {verdict(steady < 1.1, f'per-job cost grows {steady:.2f}x')}",
        )
    ]


def transfer_rows(doc: dict[str, Any]) -> list[str]:
    runs = doc["runs"]
    rows = []
    for run in runs:
        svc, bare, copy = run["service"], run["bare"], run["plain_copy"]
        up, down = run["ratio_upload_service_over_bare"], run["ratio_download_service_over_bare"]
        put = ""
        if "put_upload_mib_s" in svc:
            put = f" (signed PUT {svc['put_upload_mib_s']:.0f})"
        peaks = [r["service"]["server_vmhwm_kib"] for r in runs if r["backend"] == run["backend"]]
        flat = max(peaks) <= min(peaks) * 1.2
        spread = f"{max(peaks) / 1024:.0f} vs {min(peaks) / 1024:.0f} MiB"
        rows.append(
            row(
                f"File transfer ({run['backend']} storage)",
                f"{run['size']}: GraphQL multipart upload, signed GET download",
                f"up {svc['upload_mib_s']:.0f}{put}, down {svc['download_mib_s']:.0f} MiB/s; server peak"
                f" {svc['server_vmhwm_kib'] / 1024:.0f} MiB; side-car stage-out peak"
                f" {run['sidecar']['sidecar_ru_maxrss_kib'] / 1024:.0f} MiB",
                f"bare streaming endpoint: up {bare['upload_mib_s']:.0f}, down {bare['download_mib_s']:.0f}"
                f" MiB/s; plain copy {copy['copy_mib_s']:.0f} MiB/s",
                f"up {up:.2f}, down {down:.2f}",
                f">= 0.7 of bare: {verdict(min(up, down) >= 0.7, f'{min(up, down):.2f}')};"
                f" flat peak memory: {verdict(flat, spread)}",
            )
        )
    return rows


def replicas_rows(doc: dict[str, Any]) -> list[str]:
    rows = []
    s, one = doc["settings"], doc["replicas"]["1"]
    for count, run in doc["replicas"].items():
        if count == "1":
            continue
        ratio = doc["ratios_over_one_replica"][count]
        rate = ratio["jobs_per_second"]
        lost = run["failed"] + (s["jobs"] - run["completed"] - run["failed"])
        rows.append(
            row(
                f"Replicas on PostgreSQL ({count})",
                f"{s['jobs']} `true` jobs, {s['concurrency']} in flight, createJob to each replica in turn;"
                " a `jobEvents` subscriber per replica",
                f"{run['jobs_per_second']:.1f} jobs/s; delivery p50 {run['delivery']['p50_ms']:.0f} ms,"
                f" p99 {run['delivery']['p99_ms']:.0f} ms ({run['events_delivered']} deliveries)",
                f"one replica: {one['jobs_per_second']:.1f} jobs/s; delivery p50"
                f" {one['delivery']['p50_ms']:.0f} ms, p99 {one['delivery']['p99_ms']:.0f} ms",
                f"{ratio['jobs_per_second']:.2f} (jobs/s), {ratio['delivery_p99']:.1f}x (p99 delivery)",
                f"no job lost: {verdict(lost == 0, f'{lost} lost')}; jobs/s >= 0.5 of one replica:"
                f" {verdict(rate >= 0.5, f'{rate:.2f}')}",
            )
        )
    return rows


def table() -> str:
    lines = [
        "| benchmark | workload | service | raw baseline (same run) | ratio | target |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    machines = set()
    for name, rows in (
        ("api_overhead", api_rows),
        ("job_overhead", job_rows),
        ("fanout", fanout_rows),
        ("kube_control_plane", kube_rows),
        ("transfer", transfer_rows),
        ("replicas", replicas_rows),
    ):
        doc = load(name)
        if doc is None:
            lines.append(f"| {name} | not run | | | | |")
            continue
        machines.add(f"{doc['machine']['cpus']} CPUs, Python {doc['machine']['python']}")
        lines.extend(rows(doc))
    lines.append("")
    lines.append(f"Measured on: {'; '.join(sorted(machines))}.")
    return "\n".join(lines)


def write_table() -> None:
    text = README.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{table()}\n{END}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--table-only", action="store_true", help="only rebuild the table")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    failed = []
    if not args.table_only:
        for name in names:
            started = time.monotonic()
            print(f"== {name}", flush=True)
            script, arguments = BENCHMARKS[name]
            if arguments and arguments[-1] == "--output":
                arguments = [*arguments, name]
            done = subprocess.run(
                [sys.executable, str(ROOT / "bench" / f"{script}.py"), *arguments], cwd=ROOT
            )
            print(f"== {name}: exit {done.returncode} in {time.monotonic() - started:.0f} s", flush=True)
            if done.returncode:
                failed.append(name)
    write_table()
    print(f"table written to {README.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
