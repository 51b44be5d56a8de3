"""Helpers of the chart tests: repo paths, the values matrix, and rendering charts/contoso with the real Helm SDK
(helm-python-sdk binds Helm's Go SDK through its bundled libhelm_c: no helm binary, cluster or network)."""

from __future__ import annotations

import json
import pathlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import helm_python as helm
import jsonschema
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "contoso"
SRC = REPO / "src"
# The settings: their merge in config.rs, their flags and variables in config/flags.rs.
CONFIG_RS = [SRC / "config.rs", SRC / "config" / "flags.rs"]
RELEASE = "contoso"
NAMESPACE = "shop"
ROLES = ("accept", "process", "notify")
# The chart's default ports: public (CONTOSO_LISTEN: API, hub, SPA) and admin (CONTOSO_ADMIN_LISTEN: /metrics, /health/*).
HTTP_PORT = 8080
ADMIN_PORT = 9090
# The label telling a role's public Service (to the HTTP port) from its headless admin Service.
LISTENER_LABEL = "contoso/listener"

# The install shapes the chart promises to support; every structural test runs over all of them.
CASES: dict[str, dict[str, Any]] = {
    "default": {},
    "notify-only": {"roles": {"accept": {"enabled": False}, "process": {"enabled": False}}},
    "all-roles": {
        "roles": {
            "accept": {"enabled": True},
            "process": {"enabled": True},
            "notify": {"enabled": True, "autoscaling": {"hubConnections": {"enabled": True, "averageValue": 800}}},
        },
        "secrets": {
            "CONTOSO_JWT_SECRET": "test-only-secret",
            "CONTOSO_NEGOTIATE_SECRET": "test-only-negotiate-secret",
            "CONTOSO_DATABASE_URL": "postgres://contoso:pw@db:5432/contoso",
            "CONTOSO_REDIS_URL": "redis://redis:6379/0",
            "CONTOSO_AMQP_URL": "amqp://contoso:pw@mq:5672/%2f",
        },
        "config": {
            "CONTOSO_KEEP_ALIVE_INTERVAL_MS": 10000,
            "CONTOSO_CLIENT_TIMEOUT_MS": 20000,
            "CONTOSO_NOTIFICATION_LOG_MAX": 500,
            # jwtPublicKey needs it: the chart refuses to render without an audience.
            "CONTOSO_JWT_AUDIENCE": "contoso-shop",
        },
        "jwtPublicKey": {"existingSecret": "contoso-jwt-public"},
        "ingress": {"hosts": ["shop.example.com"], "tls": [{"secretName": "shop-tls", "hosts": ["shop.example.com"]}]},
        "metrics": {
            "serviceMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "dashboard": {"enabled": True},
        },
    },
    "ingress-off": {"ingress": {"enabled": False}},
    "existing-secret": {"secrets": {"existingSecret": "contoso-secrets"}},
    # The opt-in extras together: NetworkPolicies (restricted egress), HTTPRoute, helm test, KEDA for process, and
    # extra volumes, mounts and init containers both shared and per role.
    "options": {
        "secrets": {"existingSecret": "contoso-secrets"},
        "config": {"CONTOSO_BUS_PREFIX": "staging."},
        "extraVolumes": [{"name": "ca-bundle", "configMap": {"name": "corporate-ca"}}],
        "extraVolumeMounts": [{"name": "ca-bundle", "mountPath": "/etc/ssl/corporate", "readOnly": True}],
        "initContainers": [
            {
                "name": "wait-for-db",
                "image": "postgres:17-alpine",
                "command": ["sh", "-c", "until pg_isready -h postgres; do sleep 2; done"],
                "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }
        ],
        "roles": {
            "process": {
                "keda": {"enabled": True, "maxReplicaCount": 8, "queueLength": 50},
                "extraVolumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "64Mi"}}],
                "extraVolumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
            },
        },
        "ingress": {"hosts": ["shop.example.com"]},
        "httpRoute": {
            "enabled": True,
            "parentRefs": [{"name": "shop-gateway", "namespace": "gateway-system", "sectionName": "https"}],
            "hostnames": ["shop.example.com"],
        },
        "networkPolicy": {
            "enabled": True,
            "ingressFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway-system"}}}],
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "egress": {"restrict": True, "postgresql": {"cidrs": ["10.20.0.0/16"], "ports": [5432]}},
        },
        "helmTest": {"enabled": True},
    },
}

# Object kinds of the Prometheus Operator: not in the Kubernetes schemas, checked structurally instead.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}

# Custom resources checked against their CRD's schema (tests/chart/crds, written by crds/extract.py from the
# upstream CRDs: Gateway API v1.6.1 standard channel, KEDA v2.20.2).
CRDS = pathlib.Path(__file__).resolve().parent / "crds"
CUSTOM_RESOURCES = {
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "gateway.networking.k8s.io_httproutes.v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_triggerauthentications.v1alpha1.json",
}


def _strict(node: Any) -> Any:
    """A CRD schema as the API server applies it with strict field validation (kubectl's default): an unknown field
    is an error unless the schema preserves unknown fields."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: (_strict(v) if k != "properties" else {name: _strict(sub) for name, sub in v.items()}) for k, v in node.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@lru_cache(maxsize=None)
def custom_resource_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    schema = _strict(json.loads((CRDS / CUSTOM_RESOURCES[(api_version, kind)]).read_text()))
    schema["properties"]["apiVersion"] = {"const": api_version}
    schema["properties"]["kind"] = {"const": kind}
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    return jsonschema.Draft7Validator(schema)


def custom_resource_problems(obj: dict[str, Any]) -> list[str]:
    """What the CRD's schema refuses in a rendered custom resource (empty: valid)."""
    validator = custom_resource_validator(obj["apiVersion"], obj["kind"])
    return [
        f"{obj['kind']}/{obj['metadata']['name']}: {'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(obj)
    ]


@dataclass
class Rendered:
    objects: list[dict[str, Any]]
    notes: str
    values: dict[str, Any] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def by_role(self, kind: str) -> dict[str, dict[str, Any]]:
        """Objects of one kind keyed by their role (app.kubernetes.io/component)."""
        out = {}
        for o in self.of_kind(kind):
            role = o["metadata"]["labels"].get("app.kubernetes.io/component")
            if role:
                assert role not in out, f"two {kind} objects for role {role}"
                out[role] = o
        return out

    def services(self, listener: str) -> dict[str, dict[str, Any]]:
        """The Services of one listener ("http": the public ones, "admin": the headless admin ones) keyed by role."""
        out = {}
        for svc in self.of_kind("Service"):
            labels = svc["metadata"]["labels"]
            assert labels.get(LISTENER_LABEL) in ("http", "admin"), f"Service/{svc['metadata']['name']}: no {LISTENER_LABEL}"
            if labels[LISTENER_LABEL] == listener:
                role = labels["app.kubernetes.io/component"]
                assert role not in out, f"two {listener} Services for role {role}"
                out[role] = svc
        return out

    def named(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: found {len(found)}"
        return found[0]


def enabled_roles(values: dict[str, Any]) -> list[str]:
    roles = values.get("roles", {})
    return [r for r in ROLES if roles.get(r, {}).get("enabled", True)]


@lru_cache(maxsize=None)
def _render(values_json: str, release: str) -> Rendered:
    values = json.loads(values_json)
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=release, namespace=NAMESPACE, is_install=True)
    objects, notes = [], ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(objects=objects, notes=notes, values=values)


def render(values: dict[str, Any] | None = None, release: str = RELEASE) -> Rendered:
    return _render(json.dumps(values or {}, sort_keys=True), release)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one container per pod"
    return containers[0]


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container(deployment).get("env", [])}


def pod_env(rendered: Rendered, deployment: dict[str, Any]) -> dict[str, str]:
    """The variables the container starts with: its envFrom ConfigMaps (in order), then its own env, which wins.
    Secrets are left out (their values are not in the render when an existingSecret is used)."""
    out: dict[str, str] = {}
    for source in container(deployment).get("envFrom", []):
        if "configMapRef" in source:
            out.update(rendered.named("ConfigMap", source["configMapRef"]["name"]).get("data") or {})
    out.update(env_of(deployment))
    return out


PRESTOP = re.compile(r"^touch '(?P<file>/tmp/[^']+)' && sleep (?P<sleep>\d+)$")


def prestop(deployment: dict[str, Any]) -> tuple[str, int]:
    """The drain file and sleep of the preStop hook."""
    command = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["/bin/sh", "-c"], command
    match = PRESTOP.match(command[2])
    assert match, f"preStop does not create the drain file and sleep: {command[2]!r}"
    return match["file"], int(match["sleep"])


def config_rs_text() -> str:
    """The source of the settings, both files."""
    return "\n".join(path.read_text() for path in CONFIG_RS)


def settings_in_config_rs() -> set[str]:
    """Every CONTOSO_* variable src/config.rs and src/config/flags.rs mention."""
    return set(re.findall(r"\bCONTOSO_[A-Z0-9_]+\b", config_rs_text()))


def metrics_in_src() -> set[str]:
    """Every metric name the binary defines: the `const NAME: &str = "contoso_..."` constants under src/."""
    names = set()
    for path in SRC.rglob("*.rs"):
        names.update(re.findall(r'const [A-Z0-9_]+: &str = "(contoso_[a-z0-9_]+)"', path.read_text()))
    return names


def flags_in_config_rs() -> set[str]:
    """The long flags of RawSettings (clap derives them from the field names)."""
    text = config_rs_text()
    fields = re.findall(r"#\[arg\(long[^\]]*\)\]\s*(?:#\[[^\]]*\]\s*)*pub (\w+): Option<", text)
    return {"--" + f.replace("_", "-") for f in fields}


def refused_by_schema(values: dict) -> None:
    """The values schema refuses `values`: at validation, at render, and in helm lint."""
    import pytest

    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(values)
        with pytest.raises(helm.HelmValuesError):
            chart.render(values, name="contoso", namespace=NAMESPACE)
    assert helm.lint(CHART, values, strict=True)["errors"], "helm lint reports it too"
