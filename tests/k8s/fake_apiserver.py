"""A tiny in-memory Kubernetes API server on loopback, just enough for Helm's `install` to run
against it: discovery, create/get/list/update of namespaced and cluster objects, CRDs that report
themselves established. It lets `lint_chart.py` have the real Helm engine (helm-sdkpy has no
`template` action) render the chart and send every manifest here, where it is captured for
schema validation. Nothing is scheduled or reconciled: it is a recorder, not a cluster.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

# (group, version) → [(plural, kind, namespaced)] served by discovery.
RESOURCES: dict[tuple[str, str], list[tuple[str, str, bool]]] = {
    ("", "v1"): [
        ("namespaces", "Namespace", False),
        ("secrets", "Secret", True),
        ("configmaps", "ConfigMap", True),
        ("services", "Service", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("persistentvolumeclaims", "PersistentVolumeClaim", True),
        ("pods", "Pod", True),
        ("events", "Event", True),
    ],
    ("apps", "v1"): [("deployments", "Deployment", True), ("replicasets", "ReplicaSet", True)],
    ("rbac.authorization.k8s.io", "v1"): [
        ("roles", "Role", True),
        ("rolebindings", "RoleBinding", True),
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
    ],
    ("apiextensions.k8s.io", "v1"): [("customresourcedefinitions", "CustomResourceDefinition", False)],
    ("coordination.k8s.io", "v1"): [("leases", "Lease", True)],
    ("discovery.k8s.io", "v1"): [("endpointslices", "EndpointSlice", True)],
    ("sdplane.io", "v1alpha1"): [("sdapps", "SDApp", True)],
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def _group_version(group: str, version: str) -> str:
    return f"{group}/{version}" if group else version


class FakeApiServer:
    """Start with `with FakeApiServer() as api:`; `api.url`, `api.created` (objects POSTed).
    `prometheus_operator` adds the ServiceMonitor API to discovery."""

    def __init__(self, prometheus_operator: bool = False) -> None:
        self.resources = dict(RESOURCES)
        if prometheus_operator:
            self.resources[("monitoring.coreos.com", "v1")] = [("servicemonitors", "ServiceMonitor", True)]
        self.objects: dict[str, dict[str, Any]] = {}
        self.created: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.version = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                # Typed clients may send protobuf; only JSON bodies are understood here.
                if "json" not in (self.headers.get("Content-Type") or "json"):
                    return None
                return json.loads(raw or b"null")

            def do_GET(self) -> None:
                code, body = server.get(urlparse(self.path))
                self._send(code, body)

            def do_POST(self) -> None:
                code, body = server.create(urlparse(self.path).path, self._body())
                self._send(code, body)

            def do_PUT(self) -> None:
                code, body = server.replace(urlparse(self.path).path, self._body())
                self._send(code, body)

            def do_PATCH(self) -> None:
                path = urlparse(self.path).path
                with server.lock:
                    obj = server.objects.get(path)
                self._body()
                self._send(200, obj) if obj else self._send(404, not_found(path))

            def do_DELETE(self) -> None:
                path = urlparse(self.path).path
                with server.lock:
                    obj = server.objects.pop(path, None)
                self._send(200, obj) if obj else self._send(404, not_found(path))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "FakeApiServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def kubeconfig(self, namespace: str) -> str:
        return json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        })

    # --- discovery and reads -------------------------------------------------------------
    def get(self, url: Any) -> tuple[int, Any]:
        path = url.path.rstrip("/")
        if path == "/version":
            return 200, {"major": "1", "minor": "37", "gitVersion": "v1.37.0", "platform": "linux/amd64"}
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            groups = {}
            for group, version in self.resources:
                if group:
                    gv = {"groupVersion": f"{group}/{version}", "version": version}
                    groups[group] = {"name": group, "versions": [gv], "preferredVersion": gv}
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": list(groups.values())}
        for (group, version), resources in self.resources.items():
            prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
            if path == prefix:
                return 200, {
                    "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": _group_version(group, version),
                    "resources": [
                        {"name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind, "verbs": VERBS}
                        for plural, kind, namespaced in resources
                    ],
                }
        with self.lock:
            if path in self.objects:
                return 200, self.objects[path]
            kind = self._collection_kind(path)
            if kind is not None:
                label = parse_qs(url.query).get("labelSelector", [""])[0]
                items = [o for p, o in self.objects.items() if p.rsplit("/", 1)[0] == path and _matches(o, label)]
                return 200, {"kind": f"{kind}List", "apiVersion": "v1", "metadata": {"resourceVersion": str(self.version)}, "items": items}
        return 404, not_found(path)

    def _collection_kind(self, path: str) -> str | None:
        for (group, version), resources in self.resources.items():
            prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
            for plural, kind, namespaced in resources:
                if namespaced and path.startswith(prefix + "/namespaces/") and path.endswith("/" + plural):
                    return kind
                if path == f"{prefix}/{plural}":
                    return kind
        return None

    # --- writes --------------------------------------------------------------------------
    def _stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        meta["resourceVersion"] = str(self.version)
        if obj.get("kind") == "CustomResourceDefinition":
            obj["status"] = {"conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            ], "acceptedNames": obj.get("spec", {}).get("names", {})}
        return obj

    def create(self, path: str, obj: Any) -> tuple[int, Any]:
        if not isinstance(obj, dict) or "metadata" not in obj:
            return 400, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 400, "reason": "BadRequest", "message": "no object"}
        key = f"{path.rstrip('/')}/{obj['metadata'].get('name')}"
        with self.lock:
            if key in self.objects:
                return 409, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409, "reason": "AlreadyExists", "message": key}
            self.created.append(json.loads(json.dumps(obj)))
            self.objects[key] = self._stamp(obj)
            return 201, self.objects[key]

    def replace(self, path: str, obj: Any) -> tuple[int, Any]:
        with self.lock:
            if path not in self.objects:
                return 404, not_found(path)
            self.objects[path] = self._stamp(obj)
            return 200, self.objects[path]


def _matches(obj: dict[str, Any], selector: str) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


def not_found(path: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": f"{path} not found"}
