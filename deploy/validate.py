#!/usr/bin/env python3
"""Checks rendered manifests offline; deploy/check runs it with its pinned tools.

  validate.py --kubernetes-version 1.31.0 [...] --schemas deploy/schemas RENDERED.yaml...

1. Every object against its schema, strictly (an unknown field fails): Kubernetes' own kinds with
   kubernetes-validate's bundled schemas, other kinds with deploy/schemas/<group>_<version>_<kind>.json
   (their metadata as Kubernetes' ObjectMeta). A kind with neither fails.
2. What a schema cannot see, within one rendering: selectors that select nothing (Services,
   PodDisruptionBudgets, NetworkPolicies, HPA targets), named ports and volumes that do not exist,
   and the pod settings deploy/README.md promises (no service-account token, non-root, resources,
   probes).
Exit 1 on any problem, each printed with the rendering, object and field."""
import argparse
import json
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}


# Flags of sluice-proxy and sluice-control-plane that may be given more than once.
REPEATABLE_FLAGS = {"--label", "--listener-address", "--signing-key"}


def strict(node):
    """Objects with properties refuse others, unless they say they keep unknown fields."""
    if isinstance(node, dict):
        node = {k: strict(v) for k, v in node.items()}
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [strict(v) for v in node]
    return node


def where(error):
    return ".".join(str(p) for p in error.absolute_path) or "(top)"


class Checker:
    def __init__(self, versions, schemas):
        self.versions = versions
        self.crds = {}
        for path in sorted(Path(schemas).glob("*.json")):
            schema = strict(json.loads(path.read_text()))
            jsonschema.Draft202012Validator.check_schema(schema)
            self.crds[path.stem] = jsonschema.Draft202012Validator(schema)
        self.problems = 0

    def fail(self, render, obj, message):
        self.problems += 1
        print(f"FAIL {render}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}: {message}")

    def schema(self, render, obj):
        api, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        group, _, version = api.rpartition("/")
        key = f"{group}_{version}_{kind.lower()}"
        if key in self.crds:
            for e in sorted(self.crds[key].iter_errors(obj), key=str):
                self.fail(render, obj, f"{where(e)}: {e.message}")
            # The metadata as Kubernetes checks it, borrowing a kind that has nothing else.
            probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata", {})}
            for v in self.versions:
                try:
                    kubernetes_validate.validate(probe, v, strict=True)
                except ValidationError as e:
                    self.fail(render, obj, f"{'.'.join(map(str, e.path))}: {e.message}")
            return
        for v in self.versions:
            try:
                kubernetes_validate.validate(obj, v, strict=True)
            except ValidationError as e:
                self.fail(render, obj, f"Kubernetes {v}: {'.'.join(map(str, e.path))}: {e.message}")
            except SchemaNotFoundError:
                self.fail(render, obj, f"no schema for {api} {kind} (Kubernetes {v}, deploy/schemas)")
                return

    def references(self, render, objs):
        pods = []  # (owner, labels, pod spec): what the rendering will run
        for o in objs:
            if o.get("kind") in WORKLOADS:
                t = o["spec"]["template"]
                pods.append((o, t.get("metadata", {}).get("labels", {}), t["spec"]))
            elif o.get("kind") == "Cluster" and o["apiVersion"].startswith("postgresql.cnpg.io/"):
                # CloudNativePG's instance pods carry these labels.
                pods.append((o, {"cnpg.io/cluster": o["metadata"]["name"], "cnpg.io/podRole": "instance"}, None))
        names = {(o.get("kind"), o["metadata"]["name"]) for o in objs}

        def matching(selector):
            if not selector:
                return pods
            labels_wanted = selector.get("matchLabels", selector)
            if "matchExpressions" in selector:
                return pods  # not used in deploy/; accept rather than half-evaluate
            return [p for p in pods if all(p[1].get(k) == v for k, v in labels_wanted.items())]

        for o in objs:
            kind, spec = o.get("kind"), o.get("spec", {})
            if kind == "Service" and spec.get("selector"):
                selected = matching(spec["selector"])
                if not selected:
                    self.fail(render, o, f"selector {spec['selector']} selects no pod")
                for port in spec.get("ports", []):
                    target = port.get("targetPort")
                    if isinstance(target, str) and not any(
                            target in {p.get("name") for c in s[2]["containers"] for p in c.get("ports", [])}
                            for s in selected if s[2]):
                        self.fail(render, o, f"targetPort {target!r} is no container port of the pods it selects")
            elif kind == "PodDisruptionBudget" and not matching(spec.get("selector")):
                self.fail(render, o, f"selector {spec.get('selector')} selects no pod")
            elif kind == "NetworkPolicy":
                if not matching(spec.get("podSelector")):
                    self.fail(render, o, f"podSelector {spec.get('podSelector')} selects no pod")
                for direction, peers_key in (("ingress", "from"), ("egress", "to")):
                    for rule in spec.get(direction, []):
                        for peer in rule.get(peers_key, []):
                            # Peers in this namespace must exist here; others are conventions.
                            if "podSelector" in peer and "namespaceSelector" not in peer and not matching(peer["podSelector"]):
                                self.fail(render, o, f"{direction} peer {peer['podSelector']} selects no pod")
            elif kind == "HorizontalPodAutoscaler":
                ref = spec["scaleTargetRef"]
                target = next((x for x in objs if x.get("kind") == ref["kind"] and x["metadata"]["name"] == ref["name"]), None)
                if target is None:
                    self.fail(render, o, f"scaleTargetRef {ref['kind']}/{ref['name']} is not in this rendering")
                elif "replicas" in target["spec"]:
                    self.fail(render, o, f"{ref['kind']}/{ref['name']} sets replicas, which every apply would reset under the HPA")
        for owner, _, pod in pods:
            if pod is None:
                continue
            if pod.get("automountServiceAccountToken") is not False:
                self.fail(render, owner, "pod spec: automountServiceAccountToken must be false")
            sa = pod.get("serviceAccountName")
            if not sa or ("ServiceAccount", sa) not in names:
                self.fail(render, owner, f"pod spec: serviceAccountName {sa!r} is not a ServiceAccount of this rendering")
            if not pod.get("securityContext", {}).get("runAsNonRoot"):
                self.fail(render, owner, "pod spec: securityContext.runAsNonRoot must be true")
            volumes = {v["name"] for v in pod.get("volumes", [])}
            volumes |= {t["metadata"]["name"] for t in owner["spec"].get("volumeClaimTemplates", [])}
            for c in pod.get("initContainers", []) + pod["containers"]:
                what = f"container {c['name']}"
                for m in c.get("volumeMounts", []):
                    if m["name"] not in volumes:
                        self.fail(render, owner, f"{what}: volumeMount {m['name']!r} has no volume")
                res = c.get("resources", {})
                if not {"cpu", "memory"} <= set(res.get("requests", {})) or "memory" not in res.get("limits", {}):
                    self.fail(render, owner, f"{what}: needs cpu and memory requests and a memory limit")
                # clap refuses a flag given twice unless it repeats: the pod would crash-loop.
                flags = [a.split("=", 1)[0] for a in c.get("args", []) if a.startswith("--")]
                for flag in sorted({f for f in flags if flags.count(f) > 1} - REPEATABLE_FLAGS):
                    self.fail(render, owner, f"{what}: {flag} is given more than once")
                sc = c.get("securityContext", {})
                if sc.get("allowPrivilegeEscalation") is not False or sc.get("readOnlyRootFilesystem") is not True \
                        or "ALL" not in sc.get("capabilities", {}).get("drop", []):
                    self.fail(render, owner, f"{what}: securityContext must drop ALL, forbid privilege escalation, read-only root")
            for c in pod["containers"]:
                ports = {p.get("name") for p in c.get("ports", [])}
                if "readinessProbe" not in c:
                    self.fail(render, owner, f"container {c['name']}: no readinessProbe")
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    port = c.get(probe, {}).get("httpGet", {}).get("port")
                    if isinstance(port, str) and port not in ports:
                        self.fail(render, owner, f"container {c['name']}: {probe} port {port!r} is not a container port")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubernetes-version", action="append", required=True)
    parser.add_argument("--schemas", required=True)
    parser.add_argument("renders", nargs="+")
    args = parser.parse_args()
    checker = Checker(args.kubernetes_version, args.schemas)
    for path in args.renders:
        before = checker.problems
        render = Path(path).stem.replace("_", "/")  # deploy_fleet.yaml: deploy/fleet
        objs = [o for o in yaml.safe_load_all(Path(path).read_text()) if o]
        for o in objs:
            checker.schema(render, o)
        checker.references(render, objs)
        kinds = sorted({o["kind"] for o in objs})
        status = "ok  " if checker.problems == before else "FAIL"
        print(f"{status} {render}: {len(objs)} objects ({', '.join(kinds)})")
    versions = ", ".join(args.kubernetes_version)
    if checker.problems:
        print(f"{checker.problems} problem(s); schemas of Kubernetes {versions}, strict")
        sys.exit(1)
    print(f"all valid: schemas of Kubernetes {versions}, strict, and cross-references")


if __name__ == "__main__":
    main()
