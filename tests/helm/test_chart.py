"""The Helm chart: every CI scenario lints strictly, renders, and passes Kubernetes schema validation."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from backends.workflow.kubernetes.config import options_from
from backends.workflow.kubernetes.manifests import JOBS_NAMESPACE_RBAC, RBAC_NEEDS, network_policy_manifest
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "workflow-middlelayer"
HELM = ROOT / ".venv" / "bin" / "helm"
KUBERNETES_VERSION = "1.37.0"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM.exists(), "helm is missing: run scripts/get-helm (make test does)"
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120)


def render(*args: str) -> list[dict[str, Any]]:
    done = helm("template", "wml", str(CHART), "--namespace", "wml", *args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def test_there_are_scenarios_for_embedded_and_production() -> None:
    assert {p.name for p in SCENARIOS} >= {"embedded-values.yaml", "production-values.yaml"}


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_lints_strictly(values: Path) -> None:
    done = helm("lint", "--strict", str(CHART), "-f", str(values))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_renders_manifests_that_pass_schema_validation(values: Path) -> None:
    docs = render("-f", str(values))
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.stem)
def test_api_pod_has_secure_defaults_and_probes(values: Path) -> None:
    [deployment] = [d for d in render("-f", str(values)) if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [api] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert api["securityContext"]["readOnlyRootFilesystem"] is True
    assert api["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = {e["name"]: e for e in api["env"]}
    for secret in ("WML_ADMIN_TOKEN", "WML_SECRET_KEY", "WML_EDC_API_KEY", "WML_PROVISION_SECRET"):
        assert "secretKeyRef" in env[secret]["valueFrom"], f"{secret} must come from a Secret"


def test_production_scenario_runs_replicas_on_postgresql_s3_and_kubernetes() -> None:
    docs = render("-f", str(CHART / "ci" / "production-values.yaml"))
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert deployment["spec"]["replicas"] == 3
    assert env["WML_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "wml-database"
    assert env["WML_STORAGE"]["value"].startswith("s3://")
    assert env["WML_WORKFLOW"]["value"] == "kubernetes://wml-jobs"
    kinds = {d["kind"] for d in docs}
    assert {"Role", "RoleBinding", "NetworkPolicy", "Ingress"} <= kinds
    assert "PersistentVolumeClaim" not in kinds
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    assert policy["metadata"]["namespace"] == "wml-jobs"
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "workflow-middlelayer"
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "replicaCount=2"], "needs PostgreSQL"),
        (["--set", "replicaCount=2", "--set", "database.existingSecret=db"], "needs shared storage"),
        (["--set", "publicUrl="], "set publicUrl"),
    ],
)
def test_values_that_cannot_work_fail_rendering_with_a_clear_message(values: list[str], message: str) -> None:
    done = helm("template", "wml", str(CHART), *values)
    assert done.returncode != 0
    assert message in done.stderr


def test_catalogue_values_become_the_mounted_configmap() -> None:
    docs = render("-f", str(CHART / "ci" / "embedded-values.yaml"))
    [catalog] = [d for d in docs if d["kind"] == "ConfigMap"]
    asset = yaml.safe_load(catalog["data"]["dummy-job.yaml"])
    assert asset["id"] == "dummy-job"


def test_every_value_is_documented() -> None:
    """Every key in values.yaml has a `# --` comment above it, or sits inside a documented parent
    (helm-docs style: a documented map or literal covers what it contains)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented_parents: list[tuple[int, bool]] = []  # (indent, documented) of the open maps
    undocumented = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while documented_parents and documented_parents[-1][0] >= indent:
            documented_parents.pop()
        comments = []
        for j in range(i - 1, -1, -1):
            if not lines[j].strip().startswith("#"):
                break
            comments.append(lines[j].strip())
        documented = any(c.startswith("# --") for c in comments)
        inherited = any(doc for _, doc in documented_parents)
        following = next((x for x in lines[i + 1 :] if x.strip() and not x.strip().startswith("#")), "")
        groups_documented_keys = len(following) - len(following.lstrip()) > indent  # a map of settings
        if not documented and not inherited and not groups_documented_keys:
            undocumented.append(match.group(2))
        documented_parents.append((indent, documented or inherited))
    assert undocumented == []


def _granted(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def _needed(needs: tuple[tuple[str, str, tuple[str, ...]], ...]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for group, resource, verbs in needs for verb in verbs}


def test_the_jobs_role_grants_exactly_what_the_kubernetes_backend_uses() -> None:
    docs = render("-f", str(CHART / "ci" / "production-values.yaml"))
    [role] = [d for d in docs if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "wml-jobs"
    assert _granted(role["rules"]) == _needed(JOBS_NAMESPACE_RBAC)
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_namespace_per_consumer_gets_a_cluster_role_with_exactly_the_backends_needs() -> None:
    docs = render("-f", str(CHART / "ci" / "namespace-per-consumer-values.yaml"))
    [cluster_role] = [d for d in docs if d["kind"] == "ClusterRole"]
    assert _granted(cluster_role["rules"]) == _needed(RBAC_NEEDS)
    assert not [d for d in docs if d["kind"] == "Role"]
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["WML_K8S_NAMESPACE_PER_CONSUMER"] == "true"


def test_embedded_scenario_needs_no_kubernetes_permissions() -> None:
    docs = render("-f", str(CHART / "ci" / "embedded-values.yaml"))
    assert not [d for d in docs if d["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def _ingress_paths(*args: str) -> list[str]:
    [ingress] = [d for d in render(*args) if d["kind"] == "Ingress"]
    return [p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]


def test_the_public_ingress_serves_only_graphql_and_files_by_default() -> None:
    """/provision (where anyone could try to provision), /metrics and the health routes stay inside."""
    production = str(CHART / "ci" / "production-values.yaml")
    assert _ingress_paths("-f", production) == ["/graphql", "/files"]
    exposed = _ingress_paths("-f", production, "--set", "ingress.exposeProvisioning=true")
    assert exposed == ["/graphql", "/files", "/provision"]


def test_the_provision_secret_is_generated_once_and_the_callback_origins_come_from_values() -> None:
    docs = render("--set", "edc.callbackOrigins=http://edc:8181")
    [secret] = [d for d in docs if d["kind"] == "Secret" and "provisionSecret" in d.get("data", {})]
    assert len(secret["data"]["provisionSecret"]) >= 40
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["WML_PROVISION_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "provisionSecret"
    assert env["WML_EDC_CALLBACK_ORIGINS"]["value"] == "http://edc:8181"
    template = (CHART / "templates" / "secret.yaml").read_text()
    assert 'get $data "provisionSecret"' in template  # kept across upgrades by lookup, not re-generated


def test_production_values_turn_graphiql_and_introspection_off() -> None:
    def env(*args: str) -> dict[str, str]:
        [deployment] = [d for d in render(*args) if d["kind"] == "Deployment"]
        return {
            e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        }

    production = env("-f", str(CHART / "ci" / "production-values.yaml"))
    assert production["WML_GRAPHIQL"] == "false" and production["WML_INTROSPECTION"] == "false"
    assert env()["WML_GRAPHIQL"] == "true"  # on by default, for trying it out


def _egress_rules_open_only_dns_to_the_cluster_dns_and_the_cidrs(rules: list[dict[str, Any]]) -> None:
    assert rules, "no egress rule at all: the side-cars could not even resolve the storage"
    for rule in rules:
        assert rule.get("to"), f"an egress rule open to every address: {rule}"
    [dns] = [r for r in rules if any(p["port"] == 53 for p in r.get("ports", []))]
    [peer] = dns["to"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}
    assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}


def test_job_pods_may_reach_only_the_cluster_dns_and_the_storage() -> None:
    docs = render("-f", str(CHART / "ci" / "production-values.yaml"))
    [policy] = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert policy["spec"]["ingress"] == [] and set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    rules = policy["spec"]["egress"]
    _egress_rules_open_only_dns_to_the_cluster_dns_and_the_cidrs(rules)
    assert {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]} in rules


def test_namespace_per_consumer_gives_the_backend_the_same_egress_rules() -> None:
    docs = render("-f", str(CHART / "ci" / "namespace-per-consumer-values.yaml"))
    assert not [d for d in docs if d["kind"] in ("NetworkPolicy", "Namespace")]  # the backend makes them
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    rules = json.loads(env["WML_K8S_EGRESS_ALLOW"])
    _egress_rules_open_only_dns_to_the_cluster_dns_and_the_cidrs(rules)
    options = options_from("kubernetes://wml", Settings(k8s_egress_allow=env["WML_K8S_EGRESS_ALLOW"]))
    assert list(network_policy_manifest("wml-c-1", list(options.egress_allow))["spec"]["egress"]) == rules


def test_jobs_run_in_a_namespace_of_their_own_by_default() -> None:
    docs = render()
    [namespace] = [d for d in docs if d["kind"] == "Namespace"]
    assert namespace["metadata"]["name"] == "wml-jobs"  # the release namespace is "wml"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    [role] = [d for d in docs if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "wml-jobs"
    done = helm("template", "wml", str(CHART), "--namespace", "wml", "--set", "workflow.jobsNamespace=wml")
    assert done.returncode != 0 and "must not be the release namespace" in done.stderr


def test_replicas_roll_one_at_a_time_and_a_disruption_budget_keeps_one_serving() -> None:
    docs = render("-f", str(CHART / "ci" / "production-values.yaml"), "--set", "replicaCount=2")
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    [budget] = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    assert budget["spec"]["minAvailable"] == 1
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    embedded = render("-f", str(CHART / "ci" / "embedded-values.yaml"))
    assert not [d for d in embedded if d["kind"] == "PodDisruptionBudget"]
    [single] = [d for d in embedded if d["kind"] == "Deployment"]
    assert single["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ("workflow:\n  backend: kubernets\n", "value must be one of 'kubernetes', 'local'"),
        ("workflow:\n  sidecarImage: localhost/wml/sidecar:1\n", "/workflow/sidecarImage"),
        ("replicas: 2\n", "additional properties 'replicas' not allowed"),
        ("service:\n  port: 80000\n", "/service/port"),
    ],
)
def test_the_values_schema_refuses_a_misspelt_value_at_lint_and_install(
    values: str, complaint: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad-values.yaml"
    bad.write_text(values)
    linted = helm("lint", "--strict", str(CHART), "-f", str(bad))
    assert linted.returncode != 0 and complaint in linted.stdout + linted.stderr
    rendered = helm("template", "wml", str(CHART), "-f", str(bad))
    assert rendered.returncode != 0 and complaint in rendered.stderr


def test_the_chart_readme_matches_the_comments_of_values_yaml() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chart-readme"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    readme = (CHART / "README.md").read_text()
    assert '| `workflow.backend` | string | `"kubernetes"` |' in readme


def test_images_take_their_tags_from_the_chart_app_version_unless_set() -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]

    def images(*args: str) -> tuple[str, str]:
        [deployment] = [d for d in render(*args) if d["kind"] == "Deployment"]
        [api] = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in api["env"]}
        return api["image"], env["WML_K8S_SIDECAR_IMAGE"]

    assert images() == (f"localhost/wml/api:{app_version}", f"localhost/wml/sidecar:{app_version}")
    chosen = images(
        "--set", "image.repository=registry.example/wml/api", "--set", "image.tag=2.0",
        "--set", "workflow.sidecarImage.repository=registry.example/wml/sidecar",
        "--set", "workflow.sidecarImage.tag=2.1",
    )  # fmt: skip
    assert chosen == ("registry.example/wml/api:2.0", "registry.example/wml/sidecar:2.1")


def test_service_monitor_disruption_budget_and_pod_annotations_follow_their_toggles() -> None:
    production = str(CHART / "ci" / "production-values.yaml")
    assert not [d for d in render("-f", production) if d["kind"] == "ServiceMonitor"]
    docs = render(
        "-f", production, "--set", "metrics.serviceMonitor.enabled=true",
        "--set", "metrics.serviceMonitor.labels.release=prom", "--set", "podAnnotations.team=data",
        "--set", "podDisruptionBudget.minAvailable=2",
    )  # fmt: skip
    [monitor] = [d for d in docs if d["kind"] == "ServiceMonitor"]
    [service] = [d for d in docs if d["kind"] == "Service"]
    [endpoint] = monitor["spec"]["endpoints"]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert (endpoint["port"], endpoint["path"]) == (service["spec"]["ports"][0]["name"], "/metrics")
    assert endpoint["authorization"]["credentials"] == {"name": "wml-auth", "key": "adminToken"}
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["metadata"]["annotations"]["team"] == "data"
    [budget] = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert budget["spec"]["minAvailable"] == 2
    off = render("-f", production, "--set", "podDisruptionBudget.enabled=false")
    assert not [d for d in off if d["kind"] == "PodDisruptionBudget"]
