#!/usr/bin/env python3
"""Validate every object sdplane's controller builds against the Kubernetes schemas.

The Rust test `kube_objects_are_dumped_for_schema_validation` writes the objects (CRD, example
SDApp, Deployments, Service, Lease) as YAML into a folder; this script checks them:

- built-in kinds (Deployment, Service, Lease, CustomResourceDefinition) with `kubernetes-validate`
  in strict mode (unknown fields are errors), for the newest Kubernetes version it knows unless
  `--k8s-version` says otherwise;
- SDApp objects against the openAPIV3Schema of the CRD found in the same folder, with unknown
  fields refused, as `kubectl apply --validate=strict` would.

Exits non-zero on any invalid object, on an unreadable file, or when the folder holds no objects.

    cargo test -p sdplane-controller kube_objects   # writes target/k8s-objects
    pip install kubernetes-validate
    python3 tests/k8s/validate_objects.py [FOLDER] [--k8s-version 1.37.0]
"""

from __future__ import annotations

import argparse
import copy
import pathlib
import sys
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO / "target" / "k8s-objects"


class _JsonLikeLoader(yaml.SafeLoader):
    """YAML as the API server reads it: timestamps stay strings (RFC 3339 in the schemas)."""


_JsonLikeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_documents(folder: pathlib.Path) -> list[tuple[str, dict[str, Any]]]:
    """Every YAML document under `folder`, named `file#index`."""
    docs = []
    for path in sorted(folder.glob("*.yaml")):
        for i, doc in enumerate(yaml.load_all(path.read_text(), Loader=_JsonLikeLoader)):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise ValueError(f"{path.name}#{i}: not a mapping")
            docs.append((f"{path.name}#{i}", doc))
    return docs


def strict_structural(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD's structural schema as plain JSON Schema: `nullable` becomes a null type, and
    objects with listed properties refuse unknown ones (the API server would prune them)."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.pop("nullable", False) and isinstance(node.get("type"), str):
                node["type"] = [node["type"], "null"]
            if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node.setdefault("additionalProperties", False)
            # Formats like uint32 are Kubernetes hints, not JSON Schema formats.
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    # Every object carries these besides the schema's own fields.
    schema.setdefault("properties", {}).update(
        {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}
    )
    return schema


def crd_schemas(docs: list[tuple[str, dict[str, Any]]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) → JSON Schema, from each CRD in the documents."""
    schemas = {}
    for _, doc in docs:
        if doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        for version in spec["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            schemas[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = strict_structural(schema)
    return schemas


def validate(docs: list[tuple[str, dict[str, Any]]], k8s_version: str) -> list[str]:
    """Problems found, one line each (empty when all objects are valid)."""
    problems = []
    custom = crd_schemas(docs)
    for name, doc in docs:
        key = (doc.get("apiVersion", ""), doc.get("kind", ""))
        try:
            if key in custom:
                jsonschema.validate(doc, custom[key])
            else:
                kubernetes_validate.validate(doc, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{name} ({key[1]}): {e.message} at {'/'.join(map(str, e.path))}")
        except jsonschema.ValidationError as e:
            problems.append(f"{name} ({key[1]}): {e.message} at {'/'.join(map(str, e.absolute_path))}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{name}: no schema for {key[0]} {key[1]} in Kubernetes {k8s_version}: {e}")
        else:
            print(f"ok   {name} {key[0]} {key[1]}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=pathlib.Path, default=DEFAULT_DIR)
    parser.add_argument("--k8s-version", default=kubernetes_validate.latest_version())
    args = parser.parse_args()
    if not args.folder.is_dir():
        print(f"error: {args.folder} is not a folder; run `cargo test -p sdplane-controller kube_objects` first")
        return 2
    try:
        docs = load_documents(args.folder)
    except (OSError, ValueError, yaml.YAMLError) as e:
        print(f"error: cannot read objects: {e}")
        return 2
    if not docs:
        print(f"error: no objects in {args.folder}")
        return 2
    problems = validate(docs, args.k8s_version)
    for p in problems:
        print(f"FAIL {p}")
    print(f"{len(docs) - len(problems)} of {len(docs)} objects valid against Kubernetes {args.k8s_version}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
