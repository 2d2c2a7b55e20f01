"""The results table of ``bench/README.md``, made from ``bench/results/*.json`` alone (never by hand).

Each row shows the median with the range over the repeats (``median (min-max)``), the same-run
baseline, the ratio and the verdict, which uses the median; a size that was not measured says so, with the
reason. The last column says which commit produced the row (``+`` when the tree had uncommitted changes),
when, and the machine's load average before the run.

Usage: ``.venv/bin/python bench/table.py`` prints it; ``bench/run_all.py`` writes it into the README.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
HEADER = (
    "| benchmark | workload | service: median (min-max) | raw baseline (same run) | ratio | target | run |",
    "| --- | --- | --- | --- | --- | --- | --- |",
)


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def verdict(met: bool, by: str) -> str:
    return "met" if met else f"missed ({by})"


def row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def med(figure: dict[str, Any], fmt: str = ".0f", unit: str = "") -> str:
    """``median (min-max)`` of a spread; ``n/a`` when nothing was measured."""
    if not figure.get("runs"):
        return "n/a"
    return f"{figure['median']:{fmt}}{unit} ({figure['min']:{fmt}}-{figure['max']:{fmt}})"


def scaled(figure: dict[str, Any], factor: float) -> dict[str, Any]:
    """A spread in other units."""
    return {k: v * factor if k in ("min", "median", "max") else v for k, v in figure.items()}


def run_cell(doc: dict[str, Any]) -> str:
    p, m = doc.get("provenance", {}), doc["machine"]
    commit = p.get("commit", "unknown")[:7] + ("+" if p.get("dirty") else "")
    load = m.get("load_average_before", ["?"])[0]
    return f"`{commit}` {p.get('started_utc', '?').replace('+00:00', 'Z')}, load {load}"


def not_measured(doc: dict[str, Any], label: str) -> list[str]:
    return [row(label, "not measured", doc["not_measured"], "", "", "", run_cell(doc))]


def api_rows(doc: dict[str, Any]) -> list[str]:
    rows = []
    s = doc["settings"]
    labels = {
        "job_query": "`job(id)` query (document cached)",
        "job_query_uncached": "`job(id)` query, a distinct text each (cache misses)",
        "create_job": "`createJob` mutation, concurrent",
    }
    round_s = s["seconds"] / s["rounds"]
    for kind, label in labels.items():
        if kind not in doc["graphql"]:
            continue
        g, b = doc["graphql"][kind], doc["bare"][kind]
        ratio = doc["ratio_graphql_over_bare"][kind]
        ratio_m = ratio["median"]
        rows.append(
            row(
                f"API overhead: {label}",
                f"{s['clients']} clients, {s['rounds']} alternating rounds of {round_s:g} s",
                f"{med(g['rps'])} req/s, p50 {g['p50_ms']:.0f} ms, p99 {g['p99_ms']:.0f} ms; server CPU"
                f" {med(g['cpu_ms_per_request'], '.2f')} ms/request",
                f"bare Starlette + Store: {med(b['rps'])} req/s, p50 {b['p50_ms']:.0f} ms, p99"
                f" {b['p99_ms']:.0f} ms; CPU {med(b['cpu_ms_per_request'], '.2f')} ms/request",
                f"{med(ratio, '.2f')} (req/s)",
                f"ratio >= 0.5: {verdict(ratio['median'] >= 0.5, f'{ratio_m / 0.5:.0%} of target')}",
                run_cell(doc),
            )
        )
    return rows


def job_rows(doc: dict[str, Any]) -> list[str]:
    rows = []
    d, cfg = doc["direct_spawn"], doc["settings"]
    for flight, s in doc["in_flight"].items():
        over, rate, cpu = s["overhead_p50_ms"], s["jobs_per_second"], s["cpu_ms_per_job"]
        phases = ", ".join(
            f"{name.replace('_', ' ')} {s[name]['p50_ms']:.0f}"
            for name in ("queued_to_initializing", "initializing_to_running", "running_to_complete")
        )
        main = flight == str(cfg["concurrency"])
        over_m, rate_m = over["median"], rate["median"]
        target = (
            f"median < 50 ms: {verdict(over_m < 50, f'{over_m / 50:.1f}x the target')};"
            f" >= 50 jobs/s: {verdict(rate_m >= 50, f'{rate_m:.0f} jobs/s')}"
            if main
            else "(latency without queueing; no target)"
        )
        rows.append(
            row(
                f"Job overhead (local backend, `true`), {flight} in flight",
                f"{s['completed']} of {s['jobs']} jobs in {len(s['rounds'])} rounds",
                f"overhead p50 {med(over)} ms (p90 {s['overhead']['p90_ms']:.0f} ms over all);"
                f" {med(rate, '.1f')} jobs/s; CPU per job: server {med(cpu['server'])} ms, runners and"
                f" workers {med(cpu['runners_and_workers'])} ms; phases p50 (ms): {phases}",
                f"direct `subprocess.run`: {d['p50_ms']:.1f} ms, {d['jobs_per_second']:.0f} jobs/s",
                f"{rate['median'] / d['jobs_per_second']:.3f} (jobs/s)",
                target,
                run_cell(doc),
            )
        )
    return rows


def fanout_rows(doc: dict[str, Any]) -> list[str]:
    rows = []
    settings = doc["settings"]
    label = "Subscription fan-out (`jobEvents`)" + "".join(
        f", {k}={v}" for k, v in (settings.get("server_settings") or {}).items()
    )
    for run in doc["runs"]:
        s, b = run["service"], run["bare"]
        workload = (
            f"{run['subscribers']} subscribers, {settings['events']} jobs in {settings['rounds']} rounds"
            f" ({run['seconds']:.0f} s)"
        )
        if "not_measured" in s:
            rows.append(row(label, workload, f"not measured: {s['not_measured']}", "", "", "", run_cell(doc)))
            continue
        p99, kib = s["to_every_p99_ms"], s["kib_per_idle_subscriber"]
        p99_m = p99["median"]
        kb = kib * 1.024
        baseline = (
            f"not measured: {b['not_measured']}"
            if "not_measured" in b
            else f"bare `websockets` broadcast: p99 to every {med(b['to_every_p99_ms'])} ms, per delivery"
            f" {b['per_delivery']['p99_ms']:.0f} ms; {b['kib_per_idle_subscriber']:.0f} KiB"
        )
        ratio = run.get("ratio_p99_to_every_service_over_bare")
        rows.append(
            row(
                label,
                workload,
                f"p99 to every subscriber {med(p99)} ms; per delivery p50 {s['per_delivery']['p50_ms']:.0f},"
                f" p99 {s['per_delivery']['p99_ms']:.0f} ms ({s['deliveries']} deliveries;"
                f" {s['events_delivered_to_all']}/{s['events']} events to all); {kib:.0f} KiB per idle"
                f" subscriber; connect {s['connect_seconds']:.0f} s",
                baseline,
                f"{ratio:.1f}x (median p99, lower is better)" if ratio is not None else "n/a",
                f"p99 < 500 ms: {verdict(p99_m < 500, f'{p99_m / 500:.1f}x')}; < 50 KB:"
                f" {verdict(kb < 50, f'{kb / 50:.1f}x')}",
                run_cell(doc),
            )
        )
    return rows


def kube_rows(doc: dict[str, Any]) -> list[str]:
    f, s = doc["figures"], doc["settings"]
    failed = [r["not_measured"] for r in doc["repeats"] if "not_measured" in r]
    done = [r for r in doc["repeats"] if "not_measured" not in r]
    if not done:
        return [row("Kubernetes control plane", "not measured", "; ".join(failed), "", "", "", run_cell(doc))]
    last = done[-1]["run"]
    kinds = ", ".join(f"{kind} {per_job:.2f}" for kind, per_job in last["by_kind_per_job"].items())
    steady = f["ratio_without_lists"]["median"]
    p99 = f["pod_start_p99_ms"]["median"]
    return [
        row(
            "Kubernetes control plane (fake API server, test settings)",
            f"{s['jobs']} jobs x {len(done)} repeats ({len(failed)} not measured), dummy-job SLEEPTIME=0,"
            " 8 running at once, reconcile every 1 s",
            f"{med(f['requests_per_job'], '.2f')} API requests per job,"
            f" {med(f['per_job_without_lists'], '.2f')} without reconcile's lists (last repeat: {kinds});"
            f" {last['watch_requests_whole_run']} watch requests per run;"
            f" {med(f['jobs_per_minute'])} jobs/min; createJob to RUNNING p50"
            f" {med(f['create_to_running_p50_ms'])} ms, p99 {med(f['create_to_running_p99_ms'])} ms (queueing"
            f" for the 8 slots included); INITIALIZING to RUNNING (pod start) p50"
            f" {med(f['pod_start_p50_ms'])} ms, p99 {med(f['pod_start_p99_ms'])} ms",
            f"{s['baseline_jobs']} jobs in the same repeat: {med(f['baseline_requests_per_job'], '.2f')}"
            " requests per job",
            f"{med(f['ratio_requests_per_job_full_over_baseline'], '.2f')} (requests per job),"
            f" {med(f['ratio_without_lists'], '.2f')} without the lists",
            f"small constant per job: {verdict(steady < 1.1, f'per-job cost grows {steady:.2f}x')}; pod start"
            f" p99 <= 5 s (SLO; fake kubelet): {verdict(p99 <= 5000, f'{p99 / 5000:.1f}x')}",
            run_cell(doc),
        )
    ]


def transfer_rows(doc: dict[str, Any]) -> list[str]:
    runs = doc["runs"]
    rows = []
    for run in runs:
        label = f"File transfer ({run['backend']} storage)"
        if "not_measured" in run:
            rows.append(
                row(label, run["size"], f"not measured: {run['not_measured']}", "", "", "", run_cell(doc))
            )
            continue
        svc, bare, copy = run["service"], run["bare"], run["plain_copy"]
        up, down = run["ratio_upload_service_over_bare"], run["ratio_download_service_over_bare"]
        put = run.get("ratio_put_upload_service_over_bare")
        worst = min(r for r in (up, down, put) if r is not None)
        put_cell = f"; signed PUT {med(svc['put_upload_mib_s_spread'])}" if put is not None else ""
        peaks = [
            r["service"]["server_vmhwm_kib"]
            for r in runs
            if r["backend"] == run["backend"] and "not_measured" not in r
        ]
        flat = max(peaks) <= min(peaks) * 1.2
        spread_text = f"{max(peaks) / 1024:.0f} vs {min(peaks) / 1024:.0f} MiB"
        signed = ", signed PUT" if put is not None else ""
        ratios = f"multipart up {up:.2f}, " + (f"signed PUT {put:.2f}, " if put is not None else "")
        rows.append(
            row(
                label,
                f"{run['size']} x {svc['repeats']}: upload (GraphQL multipart{signed}), download (signed"
                " GET), each alone",
                f"upload: multipart {med(svc['upload_mib_s_spread'])}{put_cell} MiB/s; download:"
                f" {med(svc['download_mib_s_spread'])} MiB/s; server peak"
                f" {svc['server_vmhwm_kib'] / 1024:.0f} MiB; side-car stage-out peak"
                f" {run['sidecar']['sidecar_ru_maxrss_kib'] / 1024:.0f} MiB",
                f"bare streaming endpoint: upload {med(bare['upload_mib_s_spread'])}, download"
                f" {med(bare['download_mib_s_spread'])} MiB/s; plain copy {copy['copy_mib_s']:.0f} MiB/s",
                f"{ratios}down {down:.2f} (of medians)",
                f">= 0.7 of bare, each direction: {verdict(worst >= 0.7, f'{worst:.2f}')};"
                f" flat peak memory: {verdict(flat, spread_text)}",
                run_cell(doc),
            )
        )
    return rows


def replicas_rows(doc: dict[str, Any]) -> list[str]:
    rows = []
    s, one = doc["settings"], doc["replicas"].get("1", {})
    for count, run in doc["replicas"].items():
        if count == "1":
            continue
        label = f"Replicas on PostgreSQL ({count})"
        workload = (
            f"{s['jobs']} `true` jobs x {s['repeats']}, {s['concurrency']} in flight, createJob to each"
            " replica in turn; a `jobEvents` subscriber per replica"
        )
        if "not_measured" in run or "not_measured" in one:
            reason = run.get("not_measured") or f"one replica: {one['not_measured']}"
            rows.append(row(label, workload, f"not measured: {reason}", "", "", "", run_cell(doc)))
            continue
        ratio = doc["ratios_over_one_replica"][count]
        rate = ratio["jobs_per_second"]
        lost = run["failed"] + (run["jobs_sent"] - run["completed"] - run["failed"])
        rows.append(
            row(
                label,
                workload,
                f"{med(run['jobs_per_second'], '.1f')} jobs/s; delivery p50 {med(run['delivery_p50_ms'])} ms,"
                f" p99 {med(run['delivery_p99_ms'])} ms ({run['events_delivered']} deliveries)",
                f"one replica: {med(one['jobs_per_second'], '.1f')} jobs/s; delivery p50"
                f" {med(one['delivery_p50_ms'])} ms, p99 {med(one['delivery_p99_ms'])} ms",
                f"{rate:.2f} (jobs/s), {ratio['delivery_p99']:.1f}x (p99 delivery)",
                f"no job lost: {verdict(lost == 0, f'{lost} lost')}; jobs/s >= 0.5 of one replica:"
                f" {verdict(rate >= 0.5, f'{rate:.2f}')}",
                run_cell(doc),
            )
        )
    return rows


def startup_rows(doc: dict[str, Any]) -> list[str]:
    s, b, cfg = doc["service"], doc["bare"], doc["settings"]
    if not s["cold_start_s"]["runs"]:
        reasons = "; ".join(r["not_measured"] for r in doc["rounds"] if "not_measured" in r)
        return [row("Server start and memory", "not measured", reasons, "", "", "", run_cell(doc))]
    ready, peak = scaled(s["rss_ready_kib"], 1 / 1024), scaled(s["peak_kib"], 1 / 1024)
    cold, bare = s["cold_start_s"]["median"], b["uvicorn_starlette_start_s"]["median"]
    return [
        row(
            "Server cold start to ready; peak API memory with jobs in flight",
            f"fresh data directory x {s['cold_start_s']['runs']}; {cfg['jobs']} `createJob` left in flight"
            " (one running, the rest QUEUED)",
            f"cold start {med(s['cold_start_s'], '.2f', ' s')}; RSS once ready {med(ready)} MiB, peak with"
            f" {cfg['jobs']} jobs in flight {med(peak)} MiB",
            f"bare uvicorn + Starlette: {med(b['uvicorn_starlette_start_s'], '.2f', ' s')}; the interpreter"
            f" alone {med(b['interpreter_start_s'], '.3f', ' s')}",
            f"{cold / bare:.1f}x (cold start)",
            "no target set (figures users asked for)",
            run_cell(doc),
        )
    ]


ROWS: dict[str, tuple[str, Callable[[dict[str, Any]], list[str]]]] = {
    "api_overhead": ("API overhead", api_rows),
    "job_overhead": ("Job overhead", job_rows),
    "fanout": ("Subscription fan-out", fanout_rows),
    "kube_control_plane": ("Kubernetes control plane", kube_rows),
    # Not run by make bench (3 to 6 minutes): kube_control_plane.py --jobs 1000 --repeats 1 --output ...
    "kube_control_plane_1000": ("Kubernetes control plane, 1,000 jobs", kube_rows),
    "transfer": ("File transfer", transfer_rows),
    "replicas": ("Replicas on PostgreSQL", replicas_rows),
    "startup": ("Server start and memory", startup_rows),
}


def table() -> str:
    lines = list(HEADER)
    machines = set()
    for name, (label, rows) in ROWS.items():
        doc = load(name)
        if doc is None:
            lines.append(row(label, "not run", "", "", "", "", ""))
            continue
        m = doc["machine"]
        cpu, memory = m.get("cpu_model", "?"), m.get("memory_gib", "?")
        machines.add(f"{cpu}, {m['cpus']} CPUs, {memory} GiB, Python {m['python']}")
        try:
            lines.extend(not_measured(doc, label) if "not_measured" in doc else rows(doc))
        except (KeyError, TypeError) as e:  # a result file from before this table's format
            lines.append(
                row(label, "result file of an older format", f"missing {e}", "", "", "", run_cell(doc))
            )
    lines.append("")
    lines.append(
        f"Measured on: {'; '.join(sorted(machines))}. Load average: the 1-minute figure before the run."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
