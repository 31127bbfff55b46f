#!/usr/bin/env python3
"""Lint and render charts/sdplane with the real Helm engine, offline, under several sets of values,
and validate every rendered manifest against the Kubernetes schemas.

Helm v4 runs in-process through `helm-sdkpy`:
- `Lint` on a copy of the chart per values variant (warnings count as failures, like
  `helm lint --strict`);
- rendering: helm-sdkpy has no `template`/dry-run action, so each variant is *installed* into
  `fake_apiserver.FakeApiServer`, an in-memory API server on loopback that records what Helm
  creates (release records stay in memory: `HELM_DRIVER=memory`). The recorded manifests — CRD,
  Deployments, Services, RBAC, Secret, PVC, ServiceMonitor — are validated with
  `kubernetes-validate` in strict mode, and a few properties the design relies on are asserted
  (router without API credentials, controller in Kubernetes mode, non-root pods, one image).

Also checked: the chart's `crds/` copy is identical to `deploy/crd/sdapp.yaml`.
Exits non-zero on any problem.

    pip install kubernetes-validate
    pip install --ignore-requires-python helm-sdkpy
    python3 tests/k8s/lint_chart.py
"""

from __future__ import annotations

import asyncio
import copy
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Any

# Release records in memory: the fake API server does not speak the protobuf the Secret driver
# uses. Helm's Go runtime reads the environment of the process start, so re-exec with it set.
if os.environ.get("HELM_DRIVER") != "memory":
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "HELM_DRIVER": "memory"})

import kubernetes_validate  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from fake_apiserver import FakeApiServer  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "sdplane"
NAMESPACE = "sdplane"
SEVERITY = {0: "unknown", 1: "info", 2: "warning", 3: "error"}


class Variant:
    def __init__(self, overrides: dict[str, Any], operator: bool = False, must_fail: str | None = None,
                 expect_kinds: tuple[str, ...] = ()) -> None:
        self.overrides = overrides
        self.operator = operator  # whether the fake cluster serves the ServiceMonitor API
        self.must_fail = must_fail  # text the install error must contain, when it must fail
        self.expect_kinds = expect_kinds  # kinds this variant must render besides the base set


BASE_KINDS = ("CustomResourceDefinition", "Deployment", "Service", "ServiceAccount", "Role", "RoleBinding")
VARIANTS: dict[str, Variant] = {
    "defaults": Variant({}, expect_kinds=("Secret",)),
    "host-path-models": Variant({"models": {"type": "hostPath", "hostPath": "/mnt/models"}}),
    "created-pvc": Variant(
        {"models": {"pvc": {"create": True, "storageClassName": "fast", "size": "500Gi"}}},
        expect_kinds=("PersistentVolumeClaim",),
    ),
    "existing-token-secret": Variant({"adminToken": {"existingSecret": "my-token", "secretKey": "admin"}}),
    "cpu-only": Variant(
        {"replica": {"gpus": 0, "resources": {"requests": {"cpu": "", "memory": ""}, "limits": {"cpu": "", "memory": ""}}}}
    ),
    "two-controllers-and-scheduling": Variant({
        "controller": {"replicas": 2},
        "router": {"replicas": 3, "service": {"type": "LoadBalancer"}},
        "nodeSelector": {"sdplane.io/pool": "gpu"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        "imagePullSecrets": [{"name": "registry"}],
    }),
    "service-monitor": Variant({"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}}},
                               operator=True, expect_kinds=("ServiceMonitor",)),
    "service-monitor-without-operator": Variant({"serviceMonitor": {"enabled": True}},
                                                must_fail="needs the Prometheus Operator CRDs"),
    "unknown-models-type": Variant({"models": {"type": "nfs"}}, must_fail="models.type must be pvc or hostPath"),
}


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def variant_chart(workdir: pathlib.Path, name: str, overrides: dict[str, Any]) -> pathlib.Path:
    """A copy of the chart whose values.yaml carries `overrides`."""
    dest = workdir / name / "sdplane"
    shutil.copytree(CHART, dest)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    (dest / "values.yaml").write_text(yaml.safe_dump(deep_merge(values, overrides), sort_keys=False))
    return dest


def lint(chart: pathlib.Path) -> list[str]:
    """Problems Helm's lint reports (warnings and errors)."""
    import helm_sdkpy

    result = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration(namespace=NAMESPACE)).run(str(chart)))
    problems = []
    for message in result.get("Messages") or []:
        severity = message.get("Severity", 0)
        if severity >= 2:
            problems.append(f"lint {SEVERITY.get(severity, severity)} in {message.get('Path')} (details in Helm's log above)")
    if result.get("Errors") and not problems:
        problems.append(f"lint errors: {result['Errors']}")
    if result.get("TotalChartsLinted") != 1:
        problems.append(f"linted {result.get('TotalChartsLinted')} charts, expected 1")
    return problems


def render(chart: pathlib.Path, operator: bool, workdir: pathlib.Path) -> tuple[list[dict[str, Any]], str | None]:
    """Install into a fresh fake API server: (objects Helm created, install error or None)."""
    import helm_sdkpy

    with FakeApiServer(prometheus_operator=operator) as api:
        kubeconfig = workdir / f"kubeconfig-{chart.parent.name}"
        kubeconfig.write_text(api.kubeconfig(NAMESPACE))
        config = helm_sdkpy.Configuration(namespace=NAMESPACE, kubeconfig=str(kubeconfig))
        try:
            asyncio.run(helm_sdkpy.Install(config).run("sdplane", str(chart), wait=False, timeout=60))
        except helm_sdkpy.HelmError as e:
            return api.created, str(e)
        return api.created, None


def validate(objects: list[dict[str, Any]]) -> list[str]:
    problems = []
    version = kubernetes_validate.latest_version()
    for obj in objects:
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if obj.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            continue  # Prometheus Operator kinds are not in the Kubernetes schemas.
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{name}: {e.message} at {'/'.join(map(str, e.path))}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{name}: no schema: {e}")
    return problems


def design_checks(objects: list[dict[str, Any]]) -> list[str]:
    """Properties of the rendered chart that the design depends on."""
    problems = []
    deployments = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "Deployment"}
    router = deployments.get("sdplane-router")
    controller = deployments.get("sdplane-controller")
    if router is None or controller is None:
        return [f"expected router and controller Deployments, got {sorted(deployments)}"]
    router_pod, controller_pod = router["spec"]["template"]["spec"], controller["spec"]["template"]["spec"]
    if router_pod.get("automountServiceAccountToken") is not False:
        problems.append("router pod must not mount an API token (least privilege)")
    args = controller_pod["containers"][0].get("args", [])
    if args[:3] != ["controller", "--backend", "kubernetes"]:
        problems.append(f"controller args are {args}")
    if controller_pod.get("serviceAccountName") != "sdplane-controller":
        problems.append("controller pod must run as the sdplane-controller ServiceAccount")
    images = set()
    for pod in (router_pod, controller_pod):
        if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
            problems.append("pods must run as non-root")
        images.update(c["image"] for c in pod["containers"])
    env = {e["name"]: e.get("value") for e in controller_pod["containers"][0]["env"]}
    images.add(env.get("SDPLANE_REPLICA_IMAGE"))
    if len(images) != 1:
        problems.append(f"router, controller and replicas must share one image, got {images}")
    role = next((o for o in objects if o.get("kind") == "Role"), None)
    if role is not None:
        for rule in role["rules"]:
            if "endpointslices" in rule["resources"] and set(rule["verbs"]) - {"get", "list", "watch"}:
                problems.append("endpointslices must be read-only for the controller")
            if "*" in rule["verbs"] or "*" in rule["resources"]:
                problems.append(f"wildcard RBAC rule: {rule}")
    if any(o.get("kind") in ("ClusterRole", "ClusterRoleBinding") for o in objects):
        problems.append("the chart must not need cluster-wide RBAC")
    return problems


def main() -> int:
    problems: list[str] = []
    crd = CHART / "crds" / "sdapp.yaml"
    deploy_crd = REPO / "deploy" / "crd" / "sdapp.yaml"
    if not crd.is_file() or crd.read_text() != deploy_crd.read_text():
        problems.append(f"{crd} differs from {deploy_crd}: SDPLANE_UPDATE_CRD=1 cargo test -p sdplane-controller crd")

    rendered_objects = 0
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        for name, variant in VARIANTS.items():
            chart = variant_chart(work, name, variant.overrides)
            found: list[str] = []
            try:
                if variant.must_fail is None:
                    found += lint(chart)
                objects, error = render(chart, variant.operator, work)
            except Exception as e:  # noqa: BLE001 - any failure of the engine is a failure of the check
                found.append(f"helm could not run: {type(e).__name__}: {e}")
                objects, error = [], None
            if variant.must_fail is not None:
                if error is None or variant.must_fail not in error:
                    found.append(f"install must fail with {variant.must_fail!r}, got {error!r}")
            elif error is not None:
                found.append(f"install failed: {error}")
            else:
                kinds = {o.get("kind") for o in objects}
                missing = set(BASE_KINDS + variant.expect_kinds) - kinds
                if missing:
                    found.append(f"rendered no {sorted(missing)} (got {sorted(kinds)})")
                found += validate(objects)
                found += design_checks(objects)
                rendered_objects += len(objects)
            problems += [f"[{name}] {p}" for p in found]
            print(f"{'ok  ' if not found else 'FAIL'} [{name}] {len(objects)} objects rendered")
    for p in problems:
        print(f"FAIL {p}")
    print(f"{len(VARIANTS)} values variants, {rendered_objects} rendered objects validated, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
