"""Rewrite the vendored JSON schemas of tests/schemas/ (tests/test_deploy.py reads them).

Not a test and not imported by one: run it by hand when a schema should move to a newer
release. Its sources, none of which the tests need (see README.md beside this file)::

    pip install --target /tmp/kv kubernetes-validate==1.37.0
    pip install --no-deps --target /tmp/cj check-jsonschema==0.39.0
    python tests/schemas/regenerate.py --kubernetes-validate /tmp/kv --check-jsonschema /tmp/cj \\
        --rayservice-crd ray.io_rayservices.yaml --scaledobject-crd keda.sh_scaledobjects.yaml \\
        --keda-scalers keda/pkg/scalers

``ray.io_rayservices.yaml`` is ray-operator/config/crd/bases/ of ray-project/kuberay at tag
v1.7.0; ``keda.sh_scaledobjects.yaml`` is config/crd/bases/ of kedacore/keda at tag v2.20.2,
and ``keda/pkg/scalers`` that tag's scaler sources (for the redis-streams trigger's keys).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: Kubernetes versions to validate against: an old one still in providers' extended support
#: and the newest kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
#: the built-in kinds deploy/k8s uses (the definitions they reach are kept, no others)
KUBERNETES_ROOTS = (
    "io.k8s.api.apps.v1.Deployment",
    "io.k8s.api.core.v1.Service",
    "io.k8s.api.core.v1.PersistentVolumeClaim",
    "io.k8s.api.core.v1.Pod",
    "io.k8s.api.autoscaling.v2.HorizontalPodAutoscaler",
)


def _strip_descriptions(node: object) -> object:
    """The schema without its prose (``description``): a tenth of the size, the same checks."""
    if isinstance(node, dict):
        return {k: _strip_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_strip_descriptions(v) for v in node]
    return node


def _write(name: str, doc: dict) -> None:
    # One key per line: reviewable diffs when a release changes a field.
    (HERE / name).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote tests/schemas/{name}")


def compose(check_jsonschema: Path) -> None:
    """The Compose Specification's schema, byte for byte as check-jsonschema vendors it."""
    vendor = check_jsonschema / "check_jsonschema" / "builtin_schemas" / "vendor"
    data = (vendor / "compose-spec.json").read_bytes()
    expected = (vendor / "sha256" / "compose-spec.sha256").read_text().split()[0]
    assert hashlib.sha256(data).hexdigest() == expected, "compose-spec.json: sha256 differs"
    (HERE / "compose-spec.json").write_bytes(data)
    print("wrote tests/schemas/compose-spec.json")


def kubernetes(kubernetes_validate: Path, version: str) -> None:
    """The definitions the kinds of KUBERNETES_ROOTS reach, from kubernetes-validate's strict
    schemas (additionalProperties false: a misspelt field fails, as kubectl's strict field
    validation fails it)."""
    folder = (kubernetes_validate / "kubernetes_validate" / "kubernetes-json-schema"
              / f"v{version}-local-strict")
    defs = json.loads((folder / "_definitions.json").read_text())["$defs"]
    keep: set[str] = set()
    todo = list(KUBERNETES_ROOTS)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo += re.findall(r'"#/\$defs/([^"]+)"', json.dumps(defs[name]))
    _write(f"kubernetes-{version}-strict.json", {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": f"Kubernetes v{version} OpenAPI definitions as JSON Schema, from the PyPI "
                    f"package kubernetes-validate ({folder.name}/_definitions.json): only the "
                    f"definitions that {', '.join(KUBERNETES_ROOTS)} reach, descriptions "
                    "removed. Regenerate with tests/schemas/regenerate.py.",
        "$defs": {k: _strip_descriptions(defs[k]) for k in sorted(keep)},
    })


def _structural_to_json_schema(node: object) -> object:
    """A CRD's structural OpenAPI v3 schema as JSON Schema 2020-12: ``nullable`` becomes a null
    type, and an object with ``properties`` but neither ``additionalProperties`` nor
    ``x-kubernetes-preserve-unknown-fields`` rejects other keys (the API server would prune
    them silently; kubectl's strict field validation rejects them)."""
    if isinstance(node, list):
        return [_structural_to_json_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _structural_to_json_schema(v) for k, v in node.items()
           if k not in ("description", "nullable")}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _share_repeats(schema: dict, min_chars: int = 400) -> dict:
    """Each subschema of at least ``min_chars`` that occurs more than once (a container's schema
    appears for containers, initContainers and ephemeralContainers of every pod template) moved
    to ``$defs`` once and referenced: the same checks at a third of the size."""
    defs: dict[str, object] = schema.setdefault("$defs", {})

    def walk(node: object, seen: dict[str, int]) -> None:
        if isinstance(node, dict):
            text = json.dumps(node, sort_keys=True)
            if len(text) >= min_chars:
                seen[text] = seen.get(text, 0) + 1
            for k, v in node.items():
                if k != "$defs":
                    walk(v, seen)
        elif isinstance(node, list):
            for v in node:
                walk(v, seen)

    def replace(node: object, text: str, ref: dict) -> object:
        if isinstance(node, dict):
            if json.dumps(node, sort_keys=True) == text:
                return ref
            return {k: v if k == "$defs" else replace(v, text, ref) for k, v in node.items()}
        if isinstance(node, list):
            return [replace(v, text, ref) for v in node]
        return node

    while True:
        seen: dict[str, int] = {}
        walk(schema, seen)
        repeated = [t for t, n in seen.items() if n > 1]
        if not repeated:
            return schema
        text = max(repeated, key=len)
        name = f"shared{len(defs)}"
        schema = replace(schema, text, {"$ref": f"#/$defs/{name}"})
        defs = schema["$defs"]
        defs[name] = json.loads(text)


def crd(path: Path, version: str, name: str, comment: str,
        redis_streams_keys: list[str] | None = None) -> None:
    """One served version of a CustomResourceDefinition as a JSON schema of the resource
    (for a ScaledObject, with ``redis_streams_keys`` the only metadata keys of a redis-streams
    trigger)."""
    import yaml

    doc = yaml.safe_load(path.read_text())
    (served,) = [v for v in doc["spec"]["versions"] if v["name"] == version]
    schema = served["schema"]["openAPIV3Schema"]
    group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
    schema["properties"].pop("status", None)  # written by the operator, never by us
    schema["properties"]["apiVersion"] = {"const": f"{group}/{version}"}
    schema["properties"]["kind"] = {"const": kind}
    schema["required"] = sorted({*schema.get("required", ()), "apiVersion", "kind", "metadata",
                                 "spec"})
    out = _structural_to_json_schema(schema)
    out = {"$schema": "https://json-schema.org/draft/2020-12/schema",
           "$comment": comment + " CEL rules (x-kubernetes-validations) are kept but not "
           "evaluated. Regenerate with tests/schemas/regenerate.py.", **out}
    out = _share_repeats(out)
    if redis_streams_keys:
        out["$defs"] = {**out["$defs"], "redisStreamsMetadata": {
            "type": "object", "propertyNames": {"enum": redis_streams_keys},
            "additionalProperties": {"type": "string"}}}
        trigger = out["properties"]["spec"]["properties"]["triggers"]["items"]
        trigger["allOf"] = [{
            "if": {"properties": {"type": {"const": "redis-streams"}}, "required": ["type"]},
            "then": {"properties": {"metadata": {"$ref": "#/$defs/redisStreamsMetadata"}}}}]
    _write(name, out)


def keda_trigger_keys(scalers: Path) -> list[str]:
    """The trigger metadata keys KEDA's redis-streams scaler reads: the ``keda:"name=..."`` tags
    of its metadata struct and of the Redis connection struct it embeds, with ``<name>FromEnv``
    where a key may also come from the target container's environment."""
    source = ((scalers / "redis_streams_scaler.go").read_text()
              + (scalers / "redis_scaler.go").read_text())
    structs = {m.group(1): m.group(2) for m in re.finditer(
        r"type (redisStreamsMetadata|redisConnectionInfo) struct \{(.*?)\n\}", source, re.S)}
    keys: set[str] = set()
    for body in structs.values():
        for tag in re.findall(r'`keda:"([^"]*)"`', body):
            fields = dict(p.strip().split("=", 1) for p in tag.split(",") if "=" in p)
            order = fields.get("order", "").split(";")
            names = fields.get("name", "").split(";")
            if "triggerMetadata" in order:
                keys.update(names)
            if "resolvedEnv" in order:
                keys.update(f"{n}FromEnv" for n in names)
    return sorted(k for k in keys if k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kubernetes-validate", type=Path, required=True)
    ap.add_argument("--check-jsonschema", type=Path, required=True)
    ap.add_argument("--rayservice-crd", type=Path, required=True)
    ap.add_argument("--scaledobject-crd", type=Path, required=True)
    ap.add_argument("--keda-scalers", type=Path, required=True)
    args = ap.parse_args()
    compose(args.check_jsonschema)
    for version in KUBERNETES_VERSIONS:
        kubernetes(args.kubernetes_validate, version)
    crd(args.rayservice_crd, "v1", "kuberay-1.7.0-rayservice.json",
        "RayService (ray.io/v1) from KubeRay v1.7.0's CRD "
        "(ray-operator/config/crd/bases/ray.io_rayservices.yaml), status removed.")
    crd(args.scaledobject_crd, "v1alpha1", "keda-2.20.2-scaledobject.json",
        "ScaledObject (keda.sh/v1alpha1) from KEDA v2.20.2's CRD "
        "(config/crd/bases/keda.sh_scaledobjects.yaml), status removed. $defs "
        "redisStreamsMetadata: the trigger metadata keys of KEDA v2.20.2's redis-streams "
        "scaler (pkg/scalers/redis_streams_scaler.go, redis_scaler.go), added here and "
        "applied to triggers of that type; the CRD itself takes any string map.",
        redis_streams_keys=keda_trigger_keys(args.keda_scalers))


if __name__ == "__main__":
    main()
