"""Tests of charts/contoso: helm lint, Kubernetes schema validation of every rendered object (1.30 and later, strict),
and the deployment rules of the design: probes, drain and grace period, no session affinity, hardening, schema strictness."""

from __future__ import annotations

import base64
import json
import re

import helm_python as helm
import kubernetes_validate
import pytest
from kubernetes_validate.utils import all_versions
from packaging.version import Version

import chartlib
from chartlib import (
    ADMIN_PORT,
    CASES,
    CHART,
    CRD_KINDS,
    CUSTOM_RESOURCES,
    HTTP_PORT,
    ROLES,
    container,
    enabled_roles,
    env_of,
    pod_env,
    prestop,
    render,
)

# Every schema set kubernetes-validate ships from 1.30 on (it works offline from its bundled schemas).
KUBE_VERSIONS = [v for v in all_versions() if Version(v) >= Version("1.30")]
STICKY = re.compile(r"affinity|session-cookie|sticky|upstream-hash-by", re.IGNORECASE)


def test_kubernetes_validate_ships_the_versions_we_check():
    assert KUBE_VERSIONS[0] == "1.30.0"
    assert len(KUBE_VERSIONS) >= 2, KUBE_VERSIONS


# --- helm lint and Kubernetes schemas ----------------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", ["v1.30.0", "v" + all_versions()[-1]])
@pytest.mark.parametrize("name", sorted(CASES))
def test_helm_lint_is_clean(name, kube_version):
    report = helm.lint(CHART, CASES[name], strict=True, kube_version=kube_version)
    assert report["errors"] == [] and report["messages"] == [], report


def test_manifests_validate_against_kubernetes_schemas(case):
    name, rendered = case
    problems = []
    for obj in rendered.objects:
        if obj["kind"] in CRD_KINDS:
            continue
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_RESOURCES:
            problems += chartlib.custom_resource_problems(obj)
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                problems.append(f"{version} {obj['kind']}/{obj['metadata']['name']}: {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{version} {obj['kind']}/{obj['metadata']['name']}: {e.message}")
    assert not problems, "\n".join(problems)


def test_object_names_are_dns_labels(case):
    _, rendered = case
    for obj in rendered.objects:
        name = obj["metadata"]["name"]
        assert len(name) <= 63 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name


def test_long_release_names_still_give_valid_names():
    rendered = render({}, release="a-very-long-release-name-for-the-contoso-order-notifications")
    names = [o["metadata"]["name"] for o in rendered.objects]
    assert all(len(n) <= 63 for n in names), names
    assert len({(o["kind"], o["metadata"]["name"]) for o in rendered.objects}) == len(rendered.objects)


# --- objects per install shape -----------------------------------------------------------------------------------


def test_one_deployment_hpa_and_pdb_per_enabled_role(case):
    name, rendered = case
    roles = set(enabled_roles(CASES[name]))
    assert set(rendered.by_role("Deployment")) == roles
    # KEDA's ScaledObject replaces the process HPA when enabled (test_chart_options.py).
    keda = {"process"} if CASES[name].get("roles", {}).get("process", {}).get("keda", {}).get("enabled") else set()
    assert set(rendered.by_role("HorizontalPodAutoscaler")) == roles - keda
    assert set(rendered.by_role("ScaledObject")) == keda
    assert set(rendered.by_role("PodDisruptionBudget")) == roles
    for role, pdb in rendered.by_role("PodDisruptionBudget").items():
        assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == role
        assert pdb["spec"]["maxUnavailable"] == 1


ADMIN_SERVICE_PORTS = [{"name": "admin", "port": ADMIN_PORT, "targetPort": "admin", "protocol": "TCP"}]


def test_public_services_for_accept_and_notify_only(case):
    """The public Service leads to the HTTP port and never carries the admin port (a LoadBalancer would publish it);
    process has no HTTP API, so none."""
    name, rendered = case
    roles = enabled_roles(CASES[name])
    services = rendered.services("http")
    assert set(services) == {r for r in roles if r in ("accept", "notify")}
    deployments = rendered.by_role("Deployment")
    for role, svc in services.items():
        assert svc["spec"]["selector"] == deployments[role]["spec"]["selector"]["matchLabels"]
        assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]


def test_every_role_has_a_headless_admin_service(case):
    name, rendered = case
    services = rendered.services("admin")
    deployments = rendered.by_role("Deployment")
    assert set(services) == set(enabled_roles(CASES[name]))
    public = {svc["metadata"]["name"] for svc in rendered.services("http").values()}
    for role, svc in services.items():
        assert svc["metadata"]["name"] == deployments[role]["metadata"]["name"] + "-admin"
        assert svc["metadata"]["name"] not in public
        assert svc["spec"]["selector"] == deployments[role]["spec"]["selector"]["matchLabels"]
        assert svc["spec"]["type"] == "ClusterIP" and svc["spec"]["clusterIP"] == "None", "headless: the pods, not a VIP"
        assert svc["spec"]["ports"] == ADMIN_SERVICE_PORTS


def test_roles_run_the_one_image_with_their_role(case):
    _, rendered = case
    images = set()
    http = {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}
    admin = {"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}
    for role, dep in rendered.by_role("Deployment").items():
        c = container(dep)
        assert c["args"] == ["--role", role]
        # process serves nothing on the public port: it declares only the admin one.
        assert c["ports"] == ([admin] if role == "process" else [http, admin]), role
        images.add(c["image"])
    assert len(images) == 1, images


def test_every_role_serves_metrics_and_health_on_the_admin_port(case):
    """CONTOSO_ADMIN_LISTEN moves /metrics and /health/* off the public port; the chart sets it in every container."""
    _, rendered = case
    for role, dep in rendered.by_role("Deployment").items():
        env = pod_env(rendered, dep)
        assert env["CONTOSO_ADMIN_LISTEN"] == f"0.0.0.0:{ADMIN_PORT}", role
        assert env["CONTOSO_LISTEN"] == f"0.0.0.0:{HTTP_PORT}", role
        assert env_of(dep)["CONTOSO_ADMIN_LISTEN"] == f"0.0.0.0:{ADMIN_PORT}", "the container's own env, over any envFrom"


def test_hpa_leaves_replicas_to_itself_and_targets_its_deployment(case):
    _, rendered = case
    deployments = rendered.by_role("Deployment")
    for role, hpa in rendered.by_role("HorizontalPodAutoscaler").items():
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployments[role]["metadata"]["name"]}
        assert "replicas" not in deployments[role]["spec"], "a fixed replica count would fight the HPA"
        cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
        assert cpu and cpu[0]["resource"]["name"] == "cpu"
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_notify_hpa_keeps_at_least_two_pods(case):
    _, rendered = case
    hpas = rendered.by_role("HorizontalPodAutoscaler")
    if "notify" in hpas:
        assert hpas["notify"]["spec"]["minReplicas"] == 2
        scale_down = hpas["notify"]["spec"]["behavior"]["scaleDown"]
        assert scale_down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}]


def test_notify_hpa_connection_metric_hook():
    hpa = render(CASES["all-roles"]).by_role("HorizontalPodAutoscaler")["notify"]
    pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods == [{"metric": {"name": "contoso_hub_connections"}, "target": {"type": "AverageValue", "averageValue": "800"}}]
    default_hpa = render({}).by_role("HorizontalPodAutoscaler")["notify"]
    assert [m["type"] for m in default_hpa["spec"]["metrics"]] == ["Resource"], "off by default"


def test_autoscaling_off_sets_replicas():
    rendered = render({"roles": {"notify": {"autoscaling": {"enabled": False}, "replicas": 3}}})
    assert "notify" not in rendered.by_role("HorizontalPodAutoscaler")
    assert rendered.by_role("Deployment")["notify"]["spec"]["replicas"] == 3


def test_hpa_min_above_max_fails():
    with pytest.raises(helm.HelmError, match="minReplicas"):
        render({"roles": {"notify": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}}})


# --- probes, drain, grace period ----------------------------------------------------------------------------------


def test_every_role_has_liveness_readiness_and_startup_probes(case):
    _, rendered = case
    for role, dep in rendered.by_role("Deployment").items():
        c = container(dep)
        # The public port answers 404 for /health/*: every probe goes to the admin port.
        assert c["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "admin"}, role
        assert c["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "admin"}, role
        startup = c["startupProbe"]
        assert startup["httpGet"]["path"] in ("/health/live", "/health/ready"), role
        assert startup["httpGet"]["port"] == "admin", role
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["admin"] == ADMIN_PORT, role
        # The startup window must cover a slow start (migrations run at start): at least a minute.
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, role
        # A draining pod must leave the endpoints well within the preStop sleep.
        _, sleep = prestop(dep)
        ready = c["readinessProbe"]
        assert ready["periodSeconds"] * ready["failureThreshold"] < sleep, role


def test_prestop_creates_the_drain_file_the_process_watches(case):
    _, rendered = case
    for role, dep in rendered.by_role("Deployment").items():
        drain_file, sleep = prestop(dep)
        assert sleep == 15, role
        assert env_of(dep)["CONTOSO_DRAIN_FILE"] == drain_file == "/tmp/draining"
        mounts = {m["mountPath"]: m["name"] for m in container(dep)["volumeMounts"]}
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], "the drain file needs a writable /tmp on a read-only root"


def grace_is_enough(dep) -> tuple[int, int]:
    _, sleep = prestop(dep)
    env = env_of(dep)
    needed = sleep + int(env["CONTOSO_DRAIN_SPREAD"]) + int(env["CONTOSO_SHUTDOWN_TIMEOUT"])
    return dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], needed


def test_grace_period_covers_prestop_spread_and_shutdown(case):
    _, rendered = case
    for role, dep in rendered.by_role("Deployment").items():
        grace, needed = grace_is_enough(dep)
        assert grace >= needed, f"{role}: terminationGracePeriodSeconds {grace} < {needed}"
        assert grace == needed + 5, "the default margin is 5 s"


def test_grace_period_follows_custom_drain_settings():
    values = {
        "drain": {"preStopSleepSeconds": 30, "shutdownTimeoutSeconds": 60, "marginSeconds": 2},
        "roles": {"notify": {"drain": {"spreadSeconds": 20, "file": "/tmp/drain/now"}}},
    }
    deployments = render(values).by_role("Deployment")
    for role, dep in deployments.items():
        grace, needed = grace_is_enough(dep)
        assert grace == needed + 2, role
    assert grace_is_enough(deployments["notify"])[0] == 30 + 20 + 60 + 2
    assert grace_is_enough(deployments["accept"])[0] == 30 + 5 + 60 + 2
    assert prestop(deployments["notify"]) == ("/tmp/drain/now", 30)
    assert env_of(deployments["notify"])["CONTOSO_DRAIN_FILE"] == "/tmp/drain/now"


# --- ingress ------------------------------------------------------------------------------------------------------


def ingress_routes(ingress) -> dict[str, str]:
    routes = {}
    for rule in ingress["spec"]["rules"]:
        for p in rule["http"]["paths"]:
            assert p["pathType"] == "Prefix"
            assert p["backend"]["service"]["port"] == {"name": "http"}
            routes[p["path"]] = p["backend"]["service"]["name"]
    return routes


def test_ingress_routes_hub_to_notify_and_the_rest_to_accept(case):
    name, rendered = case
    ingresses = rendered.of_kind("Ingress")
    if name == "ingress-off":
        assert ingresses == []
        return
    (ingress,) = ingresses
    services = {role: svc["metadata"]["name"] for role, svc in rendered.services("http").items()}
    roles = enabled_roles(CASES[name])
    expected = {}
    if "notify" in roles:
        expected["/hubs/order-status"] = services["notify"]
    if "accept" in roles:
        expected["/api"] = services["accept"]
        expected["/"] = services["accept"]
    assert ingress_routes(ingress) == expected
    assert ingress["spec"]["ingressClassName"] == "nginx"


def test_ingress_and_http_route_never_route_to_the_admin_port(case):
    """/metrics and /health/* stay internal: every backend is a public Service on its http port, none an admin Service
    or the admin port."""
    _, rendered = case
    admin_names = {svc["metadata"]["name"] for svc in rendered.services("admin").values()}
    public = {svc["metadata"]["name"]: svc for svc in rendered.services("http").values()}
    for svc in public.values():
        assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http"]
    for ingress in rendered.of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                backend = p["backend"]["service"]
                assert backend["name"] in public and backend["name"] not in admin_names, backend
                assert backend["port"] == {"name": "http"}, backend
    for route in rendered.of_kind("HTTPRoute"):
        for rule in route["spec"]["rules"]:
            for backend in rule["backendRefs"]:
                assert backend["name"] in public and backend["name"] not in admin_names, backend
                assert backend["port"] == public[backend["name"]]["spec"]["ports"][0]["port"] != ADMIN_PORT, backend


def test_ingress_keeps_websockets_open_an_hour(case):
    _, rendered = case
    for ingress in rendered.of_kind("Ingress"):
        annotations = ingress["metadata"]["annotations"]
        for key in ("proxy-read-timeout", "proxy-send-timeout"):
            assert int(annotations[f"nginx.ingress.kubernetes.io/{key}"]) >= 3600, key


def test_ingress_class_and_annotations_come_from_values():
    values = {"ingress": {"className": "haproxy", "annotations": {"example.com/timeout": "1h"}, "hosts": ["a.example.com", "b.example.com"]}}
    ingress = render(values).of_kind("Ingress")[0]
    assert ingress["spec"]["ingressClassName"] == "haproxy"
    assert ingress["metadata"]["annotations"]["example.com/timeout"] == "1h"
    assert [r["host"] for r in ingress["spec"]["rules"]] == ["a.example.com", "b.example.com"]


# --- no session affinity ------------------------------------------------------------------------------------------


def all_annotations(obj):
    yield from (obj["metadata"].get("annotations") or {}).items()
    template = obj.get("spec", {}).get("template", {})
    yield from (template.get("metadata", {}).get("annotations") or {}).items()


def test_no_session_affinity_anywhere(case):
    _, rendered = case
    for obj in rendered.objects:
        if obj["kind"] == "Service":
            assert obj["spec"].get("sessionAffinity", "None") == "None"
            assert "sessionAffinityConfig" not in obj["spec"]
        for key, value in all_annotations(obj):
            assert not STICKY.search(key), f"{obj['kind']}/{obj['metadata']['name']}: {key}"
            if obj["kind"] == "Ingress":
                assert not STICKY.search(str(value)), f"{key}: {value}"


@pytest.mark.parametrize(
    "values",
    [
        {"ingress": {"annotations": {"nginx.ingress.kubernetes.io/affinity": "cookie"}}},
        {"ingress": {"annotations": {"nginx.ingress.kubernetes.io/session-cookie-name": "route"}}},
        {"ingress": {"annotations": {"nginx.ingress.kubernetes.io/upstream-hash-by": "$remote_addr"}}},
        {"roles": {"notify": {"service": {"annotations": {"traefik.ingress.kubernetes.io/service.sticky.cookie": "true"}}}}},
    ],
    ids=["affinity", "session-cookie", "upstream-hash-by", "sticky-service"],
)
def test_schema_refuses_sticky_session_annotations(values):
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)


# --- hardening ----------------------------------------------------------------------------------------------------


def test_containers_run_non_root_on_a_read_only_root(case):
    _, rendered = case
    for role, dep in rendered.by_role("Deployment").items():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, role
        assert pod["securityContext"]["runAsUser"] > 0, role
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, role
        assert pod["automountServiceAccountToken"] is False, role
        sc = container(dep)["securityContext"]
        assert sc["runAsNonRoot"] is True, role
        assert sc["readOnlyRootFilesystem"] is True, role
        assert sc["allowPrivilegeEscalation"] is False, role
        assert sc["capabilities"] == {"drop": ["ALL"]}, role
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, role
        assert "memory" in container(dep)["resources"]["limits"], role
        assert "cpu" in container(dep)["resources"]["requests"], "the HPA's CPU target needs a request"


def test_pods_spread_over_zones_and_nodes(case):
    _, rendered = case
    for role, dep in rendered.by_role("Deployment").items():
        constraints = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in constraints} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        for c in constraints:
            assert c["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"], role


# --- settings and secrets -----------------------------------------------------------------------------------------


SECRET_KEYS = {"CONTOSO_JWT_SECRET", "CONTOSO_NEGOTIATE_SECRET", "CONTOSO_DATABASE_URL", "CONTOSO_REDIS_URL", "CONTOSO_AMQP_URL"}


def test_settings_come_from_the_configmap_and_secrets_from_the_secret(case):
    name, rendered = case
    (config,) = [c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-config")]
    data = config["data"]
    assert data["CONTOSO_LISTEN"] == "0.0.0.0:8080"
    assert "CONTOSO_ADMIN_LISTEN" not in data, "set in each container's env, next to the probes that depend on it"
    assert data["CONTOSO_CHANNEL_PREFIX"] == "contoso-signalr"
    assert data["CONTOSO_HUB_NAME"] == "Contoso.OrderNotification.Hubs.OrderStatusHub"
    assert not SECRET_KEYS & set(data), "secrets never go into the ConfigMap"
    existing = CASES[name].get("secrets", {}).get("existingSecret")
    secrets = rendered.of_kind("Secret")
    if existing:
        assert secrets == []
        secret_name = existing
    else:
        (secret,) = secrets
        secret_name = secret["metadata"]["name"]
        assert set(secret.get("data") or {}) <= SECRET_KEYS
        given = {k for k, v in CASES[name].get("secrets", {}).items() if k in SECRET_KEYS and v}
        assert set(secret.get("data") or {}) == given
    for role, dep in rendered.by_role("Deployment").items():
        env_from = container(dep)["envFrom"]
        assert {"configMapRef": {"name": config["metadata"]["name"]}} in env_from, role
        assert {"secretRef": {"name": secret_name}} in env_from, role


def test_hub_settings_reach_the_configmap_and_the_negotiate_secret_the_secret():
    rendered = render(CASES["all-roles"])
    config = [c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-config")][0]["data"]
    assert config["CONTOSO_KEEP_ALIVE_INTERVAL_MS"] == "10000"
    assert config["CONTOSO_CLIENT_TIMEOUT_MS"] == "20000"
    assert config["CONTOSO_NOTIFICATION_LOG_MAX"] == "500"
    assert "CONTOSO_NEGOTIATE_SECRET" not in config
    (secret,) = rendered.of_kind("Secret")
    assert base64.b64decode(secret["data"]["CONTOSO_NEGOTIATE_SECRET"]).decode() == "test-only-negotiate-secret"
    # Left out when empty: the binary then derives the key from the JWT secret.
    (default_secret,) = render({"secrets": {"CONTOSO_JWT_SECRET": "x"}}).of_kind("Secret")
    assert set(default_secret["data"]) == {"CONTOSO_JWT_SECRET"}


def test_notes_warn_when_notify_pods_cannot_share_a_negotiate_key():
    public_only = {"jwtPublicKey": {"existingSecret": "contoso-jwt-public"}, "config": {"CONTOSO_JWT_AUDIENCE": "contoso-shop"}}
    assert "CONTOSO_NEGOTIATE_SECRET" in render(public_only).notes
    shared = {**public_only, "secrets": {"CONTOSO_NEGOTIATE_SECRET": "shared"}}
    assert "CONTOSO_NEGOTIATE_SECRET" not in render(shared).notes
    assert "CONTOSO_NEGOTIATE_SECRET" not in render(CASES["all-roles"]).notes


def test_role_config_overrides_shared_config():
    values = {"config": {"CONTOSO_PREFETCH": 32}, "roles": {"process": {"config": {"CONTOSO_PREFETCH": 64, "CONTOSO_DEV_AUTH": False}}}}
    rendered = render(values)
    env = env_of(rendered.by_role("Deployment")["process"])
    assert env["CONTOSO_PREFETCH"] == "64"
    assert env["CONTOSO_DEV_AUTH"] == "false"
    assert "CONTOSO_PREFETCH" not in env_of(rendered.by_role("Deployment")["accept"])


def test_large_numbers_render_without_exponent():
    rendered = render({"config": {"CONTOSO_STATUS_TTL": 10_000_000}})
    config = [c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-config")][0]
    assert config["data"]["CONTOSO_STATUS_TTL"] == "10000000"


def test_jwt_public_key_is_mounted_and_named():
    dep = render(CASES["all-roles"]).by_role("Deployment")["notify"]
    assert env_of(dep)["CONTOSO_JWT_PUBLIC_KEY"] == "/etc/contoso/jwt/public.pem"
    mounts = {m["name"]: m for m in container(dep)["volumeMounts"]}
    assert mounts["jwt-public-key"] == {"name": "jwt-public-key", "mountPath": "/etc/contoso/jwt", "readOnly": True}


PUBLIC_KEY = {"jwtPublicKey": {"existingSecret": "contoso-jwt-public"}}


@pytest.mark.parametrize(
    "values",
    [
        PUBLIC_KEY,
        {**PUBLIC_KEY, "config": {"CONTOSO_JWT_AUDIENCE": ""}},
        {**PUBLIC_KEY, "config": {"CONTOSO_JWT_ISSUER": "https://login.example.com/"}},
        {**PUBLIC_KEY, "roles": {"accept": {"enabled": False}, "process": {"enabled": False}}},
        # The audience of one role does not cover the other.
        {**PUBLIC_KEY, "roles": {"notify": {"config": {"CONTOSO_JWT_AUDIENCE": "contoso-shop"}}}},
        # A role's own empty value overrides the shared one in its pods (env wins over envFrom).
        {**PUBLIC_KEY, "config": {"CONTOSO_JWT_AUDIENCE": "contoso-shop"}, "roles": {"accept": {"config": {"CONTOSO_JWT_AUDIENCE": ""}}}},
    ],
    ids=["no-audience", "empty-audience", "issuer-only", "notify-only", "notify-audience-only", "role-empties-it"],
)
def test_jwt_public_key_without_an_audience_fails(values):
    """An identity provider signs the tokens of all its applications with one key: without an audience accept and
    notify would take tokens issued for any other application, so the chart refuses to render."""
    with pytest.raises(helm.HelmError, match=r"config\.CONTOSO_JWT_AUDIENCE"):
        render(values)
    # (helm lint only logs a template's `fail`; install, upgrade and template stop on it.)


@pytest.mark.parametrize(
    "values",
    [
        {**PUBLIC_KEY, "config": {"CONTOSO_JWT_AUDIENCE": "contoso-shop"}},
        {**PUBLIC_KEY, "roles": {r: {"config": {"CONTOSO_JWT_AUDIENCE": "contoso-shop"}} for r in ("accept", "notify")}},
        {**PUBLIC_KEY, "config": {"CONTOSO_JWT_AUDIENCE": "contoso-shop"}, "secrets": {"existingSecret": "contoso-secrets"}},
    ],
    ids=["shared-config", "role-config", "existing-secret"],
)
def test_jwt_public_key_with_an_audience_reaches_accept_and_notify(values):
    rendered = render(values)
    deployments = rendered.by_role("Deployment")
    for role in ("accept", "notify"):
        env = pod_env(rendered, deployments[role])
        assert env["CONTOSO_JWT_AUDIENCE"] == "contoso-shop", role
        assert env["CONTOSO_JWT_PUBLIC_KEY"] == "/etc/contoso/jwt/public.pem", role
        volumes = {v["name"]: v for v in deployments[role]["spec"]["template"]["spec"]["volumes"]}
        assert volumes["jwt-public-key"]["secret"]["secretName"] == "contoso-jwt-public", role
    report = helm.lint(CHART, values, strict=True)
    assert report["errors"] == [] and report["messages"] == [], report


def test_jwt_public_key_needs_no_audience_in_a_process_only_release():
    """process validates no tokens, so a per-role release of it renders with the shared jwtPublicKey alone."""
    values = {**PUBLIC_KEY, "roles": {"accept": {"enabled": False}, "notify": {"enabled": False}}}
    assert set(render(values, release="contoso-process").by_role("Deployment")) == {"process"}


JWKS = "https://login.example.com/.well-known/jwks.json"


@pytest.mark.parametrize(
    "values",
    [
        {"config": {"CONTOSO_JWT_JWKS_URL": JWKS}},
        {"roles": {"notify": {"config": {"CONTOSO_JWT_JWKS_URL": JWKS}}}},
    ],
    ids=["shared", "one-role"],
)
def test_a_jwks_url_without_an_audience_fails(values):
    """A JWKS is an identity provider's too: the same rule as jwtPublicKey."""
    with pytest.raises(helm.HelmError, match=r"CONTOSO_JWT_JWKS_URL is set but config\.CONTOSO_JWT_AUDIENCE"):
        render(values)


def test_a_jwks_url_with_an_audience_reaches_accept_and_notify():
    rendered = render({"config": {"CONTOSO_JWT_JWKS_URL": JWKS, "CONTOSO_JWT_AUDIENCE": "contoso-shop", "CONTOSO_JWT_JWKS_REFRESH_SECS": 120}})
    for role in ("accept", "notify"):
        env = pod_env(rendered, rendered.by_role("Deployment")[role])
        assert env["CONTOSO_JWT_JWKS_URL"] == JWKS and env["CONTOSO_JWT_JWKS_REFRESH_SECS"] == "120", role


@pytest.mark.parametrize("url", ["file:///etc/passwd", "login.example.com/jwks.json"])
def test_a_jwks_url_that_is_not_http_is_refused_by_the_schema(url):
    with pytest.raises(helm.HelmError):
        render({"config": {"CONTOSO_JWT_JWKS_URL": url, "CONTOSO_JWT_AUDIENCE": "contoso-shop"}})


# Seed nodes of a Redis Cluster, as CONTOSO_REDIS_URL carries them in cluster mode.
SEEDS = "redis://redis-0.redis:6379,redis://redis-1.redis:6379,redis://redis-2.redis:6379"


@pytest.mark.parametrize(
    ("values", "pubsub"),
    [
        ({"config": {"CONTOSO_REDIS_MODE": "cluster"}, "secrets": {"CONTOSO_REDIS_URL": SEEDS}}, {}),
        (
            {"config": {"CONTOSO_REDIS_MODE": "cluster", "CONTOSO_BACKPLANE_PUBSUB": "sharded"}, "secrets": {"CONTOSO_REDIS_URL": SEEDS}},
            {role: "sharded" for role in ROLES},
        ),
        # .NET pods share the backplane: notify keeps classic on the cluster.
        (
            {
                "config": {"CONTOSO_REDIS_MODE": "cluster", "CONTOSO_BACKPLANE_PUBSUB": "sharded"},
                "roles": {"notify": {"config": {"CONTOSO_BACKPLANE_PUBSUB": "classic"}}},
                "secrets": {"CONTOSO_REDIS_URL": SEEDS},
            },
            {"accept": "sharded", "process": "sharded", "notify": "classic"},
        ),
        # The seed list lives in an existing Secret the chart cannot read.
        ({"config": {"CONTOSO_REDIS_MODE": "cluster"}, "secrets": {"existingSecret": "contoso-secrets"}}, {}),
    ],
    ids=["cluster", "cluster-sharded", "notify-classic", "existing-secret"],
)
def test_redis_cluster_settings_reach_every_pod(values, pubsub):
    """Cluster mode and the pub/sub kind reach every role's pods like any other setting, and the seed list reaches them
    through the Secret."""
    rendered = render(values)
    deployments = rendered.by_role("Deployment")
    assert set(deployments) == set(ROLES)
    secret = values["secrets"].get("existingSecret") or rendered.of_kind("Secret")[0]["metadata"]["name"]
    for role, dep in deployments.items():
        env = pod_env(rendered, dep)
        assert env["CONTOSO_REDIS_MODE"] == "cluster", role
        assert env.get("CONTOSO_BACKPLANE_PUBSUB") == pubsub.get(role), role
        assert {"secretRef": {"name": secret}} in container(dep)["envFrom"], role
    if not values["secrets"].get("existingSecret"):
        (made,) = rendered.of_kind("Secret")
        assert base64.b64decode(made["data"]["CONTOSO_REDIS_URL"]).decode() == SEEDS
    report = helm.lint(CHART, values, strict=True)
    assert report["errors"] == [] and report["messages"] == [], report


@pytest.mark.parametrize(
    "values",
    [
        {"config": {"CONTOSO_BACKPLANE_PUBSUB": "sharded"}},
        {"config": {"CONTOSO_REDIS_MODE": "standalone", "CONTOSO_BACKPLANE_PUBSUB": "sharded"}},
        {"roles": {"notify": {"config": {"CONTOSO_BACKPLANE_PUBSUB": "sharded"}}}},
        # A role's own standalone wins over the shared cluster in its pods.
        {
            "config": {"CONTOSO_REDIS_MODE": "cluster", "CONTOSO_BACKPLANE_PUBSUB": "sharded"},
            "roles": {"notify": {"config": {"CONTOSO_REDIS_MODE": "standalone"}}},
            "secrets": {"existingSecret": "contoso-secrets"},
        },
    ],
    ids=["sharded-alone", "sharded-standalone", "notify-sharded", "role-standalone"],
)
def test_sharded_pubsub_without_a_redis_cluster_fails(values):
    """SPUBLISH/SSUBSCRIBE exist on a Redis Cluster only: the binary refuses sharded with standalone at start (the pods
    would crash-loop), so the chart refuses to render."""
    with pytest.raises(helm.HelmError, match=r"CONTOSO_BACKPLANE_PUBSUB is sharded but CONTOSO_REDIS_MODE is standalone"):
        render(values)


@pytest.mark.parametrize(
    "values",
    [
        {"secrets": {"CONTOSO_REDIS_URL": SEEDS}},
        {"config": {"CONTOSO_REDIS_MODE": "cluster"}, "roles": {"process": {"config": {"CONTOSO_REDIS_MODE": "standalone"}}}, "secrets": {"CONTOSO_REDIS_URL": SEEDS}},
    ],
    ids=["shared", "one-role"],
)
def test_a_seed_list_without_cluster_mode_fails(values):
    """In standalone mode --redis-url is one server; the binary refuses a list at start, the chart before."""
    with pytest.raises(helm.HelmError, match=r"CONTOSO_REDIS_URL lists several addresses .* Set config\.CONTOSO_REDIS_MODE=cluster"):
        render(values)


@pytest.mark.parametrize(
    "values",
    [
        {"config": {"CONTOSO_REDIS_MODE": "sentinel"}},
        {"config": {"CONTOSO_REDIS_MODE": ""}},
        {"roles": {"notify": {"config": {"CONTOSO_BACKPLANE_PUBSUB": "spublish"}}}},
        {"config": {"CONTOSO_BACKPLANE_PUBSUB": ""}},
        {"config": {"CONTOSO_REDIS_MODE": "cluster"}, "secrets": {"CONTOSO_REDIS_URL": "redis://redis-0:6379,redis-1:6379"}},
        {"config": {"CONTOSO_REDIS_MODE": "cluster"}, "secrets": {"CONTOSO_REDIS_URL": SEEDS + ","}},
    ],
    ids=["mode-enum", "mode-empty", "pubsub-enum", "pubsub-empty", "seed-without-scheme", "trailing-comma"],
)
def test_redis_cluster_mistakes_are_refused_by_the_schema(values):
    """Enums (an empty value would reach the binary as an invalid one: leave the key out for its default) and a seed
    list whose every node is a redis:// or rediss:// URL."""
    chartlib.refused_by_schema(values)


HUB_BOUNDS = {
    "CONTOSO_MAX_CONNECTIONS": 20000,
    "CONTOSO_MAX_CONNECTIONS_PER_USER": 8,
    "CONTOSO_CLOSE_ON_TOKEN_EXPIRY": False,
    "CONTOSO_HUB_INVOCATIONS_PER_SECOND": 0,
    "CONTOSO_ORDERS_PER_SECOND_PER_USER": 5,
    "CONTOSO_REQUEST_BODY_TIMEOUT_MS": 5000,
}
HUB_BOUNDS_ENV = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in HUB_BOUNDS.items()}


def test_connection_and_rate_bounds_pass_the_schema_and_reach_the_pods():
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema({"config": HUB_BOUNDS})
        chart.validate_schema({"roles": {"notify": {"config": HUB_BOUNDS}}})
    rendered = render({"config": HUB_BOUNDS})
    for role, dep in rendered.by_role("Deployment").items():
        env = pod_env(rendered, dep)
        assert {k: env.get(k) for k in HUB_BOUNDS} == HUB_BOUNDS_ENV, role
    # One role's own value goes into its container's env and wins over the shared one.
    rendered = render({"config": {"CONTOSO_MAX_CONNECTIONS": 20000}, "roles": {"notify": {"config": {"CONTOSO_MAX_CONNECTIONS": 0}}}})
    deployments = rendered.by_role("Deployment")
    assert env_of(deployments["notify"])["CONTOSO_MAX_CONNECTIONS"] == "0"
    assert pod_env(rendered, deployments["notify"])["CONTOSO_MAX_CONNECTIONS"] == "0"
    assert pod_env(rendered, deployments["accept"])["CONTOSO_MAX_CONNECTIONS"] == "20000"
    assert helm.lint(CHART, {"config": HUB_BOUNDS}, strict=True)["errors"] == []


def test_chart_covers_every_setting_of_the_binary():
    """Each CONTOSO_* variable of src/config.rs is a chart value, a secret, or set by the chart itself, and the
    schema offers no setting the binary does not know."""
    with helm.Chart.load(CHART) as chart:
        schema = chart.schema
    offered = set(schema["definitions"]["settings"]["properties"])
    secrets = set(schema["properties"]["secrets"]["properties"]) - {"existingSecret"}
    assert not MANAGED & offered, "a setting the chart manages is not offered under config"
    # --config names a TOML file; in Kubernetes the ConfigMap's variables take its place.
    unused = {"CONTOSO_CONFIG"}
    binary = chartlib.settings_in_config_rs()
    assert binary - offered - secrets - MANAGED - unused == set(), "settings the chart cannot set"
    assert offered - binary == set(), "chart settings the binary does not know"
    assert MANAGED - binary == set(), "managed settings the binary does not know"
    assert secrets == SECRET_KEYS
    # What the chart manages, it really sets, in every role's pods (CONTOSO_ROLE through args; the public key's path
    # when jwtPublicKey is used, as in the all-roles case).
    rendered = render(CASES["all-roles"])
    for role, dep in rendered.by_role("Deployment").items():
        assert MANAGED - {"CONTOSO_ROLE"} <= set(pod_env(rendered, dep)), role
        assert container(dep)["args"] == ["--role", role]


# Settings the chart sets itself, from its own values: refused under config.
MANAGED = {
    "CONTOSO_ROLE",
    "CONTOSO_LISTEN",
    "CONTOSO_ADMIN_LISTEN",
    "CONTOSO_DRAIN_FILE",
    "CONTOSO_DRAIN_SPREAD",
    "CONTOSO_SHUTDOWN_TIMEOUT",
    "CONTOSO_JWT_PUBLIC_KEY",
}


def test_admin_port_follows_its_value_everywhere():
    """A custom adminPort reaches the env, the container port the probes name, the annotation, the admin Services,
    the NetworkPolicies and the helm test Pod; the public side keeps containerPort."""
    values = {"adminPort": 9191, "containerPort": 8081, "networkPolicy": {"enabled": True}, "helmTest": {"enabled": True},
              "metrics": {"serviceMonitor": {"enabled": True}}}
    rendered = render(values)
    for role, dep in rendered.by_role("Deployment").items():
        c = container(dep)
        assert env_of(dep)["CONTOSO_ADMIN_LISTEN"] == "0.0.0.0:9191", role
        assert pod_env(rendered, dep)["CONTOSO_LISTEN"] == "0.0.0.0:8081", role
        assert {p["name"]: p["containerPort"] for p in c["ports"]}["admin"] == 9191, role
        assert {c[p]["httpGet"]["port"] for p in ("startupProbe", "livenessProbe", "readinessProbe")} == {"admin"}, role
        assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9191", role
    for svc in rendered.services("admin").values():
        assert svc["spec"]["ports"][0]["port"] == 9191
    for role, policy in rendered.by_role("NetworkPolicy").items():
        ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
        assert ports == ([9191] if role == "process" else [8081, 9191]), role
    (pod,) = rendered.of_kind("Pod")
    assert all(c["command"][-1].endswith(".svc:9191/health/ready") for c in pod["spec"]["containers"])
    assert "admin port 9191" in rendered.notes


def test_admin_port_equal_to_the_container_port_fails():
    """Two listeners cannot bind one port: the pods would crash-loop, so the chart refuses to render."""
    with pytest.raises(helm.HelmError, match="adminPort 8080 equals containerPort"):
        render({"adminPort": 8080})


# --- values schema ------------------------------------------------------------------------------------------------


def test_default_and_matrix_values_pass_the_schema():
    with helm.Chart.load(CHART) as chart:
        for values in CASES.values():
            chart.validate_schema(values)


@pytest.mark.parametrize(
    "values",
    [
        {"roles": {"notfy": {"enabled": True}}},
        {"roles": {"notify": {"replica": 3}}},
        {"roles": {"notify": {"autoscaling": {"minReplica": 2}}}},
        {"config": {"CONTOSO_CHANEL_PREFIX": "contoso-signalr"}},
        {"config": {"CONTOSO_PREFETCH": "lots"}},
        {"config": {"CONTOSO_LOG_FORMAT": "xml"}},
        {"config": {"CONTOSO_SHUTDOWN_TIMEOUT": 30}},
        {"config": {"CONTOSO_ADMIN_LISTEN": "0.0.0.0:9999"}},
        {"roles": {"notify": {"config": {"CONTOSO_ADMIN_LISTEN": "127.0.0.1:9090"}}}},
        {"adminPort": 0},
        {"adminPort": "9090"},
        {"adminPort": None},
        {"roles": {"process": {"service": {"enabled": True, "type": "ClusterIP", "port": 80}}}},
        {"config": {"CONTOSO_NEGOTIATE_SECRET": "not-in-a-configmap"}},
        {"roles": {"notify": {"config": {"CONTOSO_JWT_SECRET": "not-in-a-configmap"}}}},
        {"config": {"CONTOSO_MAX_MESSAGE_SIZE": 100}},
        {"config": {"CONTOSO_SEND_QUEUE": 0}},
        {"config": {"CONTOSO_MAX_CONNECTIONS": -1}},
        {"roles": {"notify": {"config": {"CONTOSO_MAX_CONNECTIONS_PER_USER": "32"}}}},
        {"config": {"CONTOSO_CLOSE_ON_TOKEN_EXPIRY": "no"}},
        {"config": {"CONTOSO_HUB_INVOCATIONS_PER_SECOND": 2.5}},
        {"config": {"CONTOSO_ORDERS_PER_SECOND_PER_USER": -5}},
        {"config": {"CONTOSO_REQUEST_BODY_TIMEOUT_MS": 5}},
        {"roles": {"notify": {"config": {"CONTOSO_STATEFUL_RECONNECT_WINDOW": -1}}}},
        {"config": {"CONTOSO_STATEFUL_RECONNECT_BUFFER": "100k"}},
        {"config": {"CONTOSO_STATEFUL_RECONNECT_BUFFER": 512}},
        {"ingres": {"enabled": False}},
        {"drain": {"preStopSleep": 10}},
        {"drain": {"file": "/var/run/draining"}},
        {"secrets": {"CONTOSO_REDIS_URL": "localhost:6379"}},
        {"probes": {"startup": {"path": "/"}}},
        {"roles": {"accept": {"enabled": False}, "process": {"enabled": False}, "notify": {"enabled": False}}},
    ],
    ids=[
        "role-name",
        "role-key",
        "nested-key",
        "setting-name",
        "setting-type",
        "setting-enum",
        "chart-managed-setting",
        "chart-managed-admin-listen",
        "role-admin-listen",
        "admin-port-zero",
        "admin-port-string",
        "admin-port-null",
        "process-public-service",
        "secret-in-config",
        "secret-in-role-config",
        "below-binary-minimum",
        "zero-send-queue",
        "negative-max-connections",
        "string-connections-per-user",
        "close-on-expiry-not-boolean",
        "fractional-invocations",
        "negative-order-rate",
        "body-timeout-below-minimum",
        "negative-stateful-window",
        "string-stateful-buffer",
        "stateful-buffer-below-minimum",
        "top-level-key",
        "drain-key",
        "drain-file-outside-tmp",
        "url-scheme",
        "probe-path",
        "no-role",
    ],
)
def test_values_mistakes_fail_schema_validation(values):
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(values)
        # helm install/template validate the same way before rendering.
        with pytest.raises(helm.HelmValuesError):
            chart.render(values, name="contoso", namespace="shop")
    report = helm.lint(CHART, values, strict=True)
    assert report["errors"], "helm lint reports it too"


# --- monitoring ---------------------------------------------------------------------------------------------------


def test_monitoring_is_off_by_default(default):
    kinds = {o["kind"] for o in default.objects}
    assert not kinds & CRD_KINDS
    assert not [c for c in default.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]


def test_service_monitor_scrapes_the_admin_port_of_every_role():
    rendered = render(CASES["all-roles"])
    (monitor,) = rendered.of_kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["endpoints"] == [{"port": "admin", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}]
    selector = monitor["spec"]["selector"]["matchLabels"]
    # It selects the admin Services, one per role, and no public one (those have no admin port).
    selected = {svc["metadata"]["name"] for svc in rendered.of_kind("Service") if selector.items() <= svc["metadata"]["labels"].items()}
    admin = rendered.services("admin")
    assert set(admin) == set(ROLES)
    assert selected == {svc["metadata"]["name"] for svc in admin.values()}
    for svc in admin.values():
        assert [p["name"] for p in svc["spec"]["ports"]] == ["admin"]
    deployments = rendered.by_role("Deployment")
    for role, dep in deployments.items():
        assert {p["name"]: p["containerPort"] for p in container(dep)["ports"]}["admin"] == ADMIN_PORT, role
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [chartlib.NAMESPACE]}
    assert monitor["spec"]["targetLabels"] == ["app.kubernetes.io/component"]


def test_prometheus_annotations_point_at_the_admin_port(case):
    _, rendered = case
    for role, dep in rendered.by_role("Deployment").items():
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", role
        assert annotations["prometheus.io/port"] == str(ADMIN_PORT), role
        assert annotations["prometheus.io/path"] == "/metrics", role
    off = render({"metrics": {"podAnnotations": False}}).by_role("Deployment")["notify"]
    assert not [k for k in off["spec"]["template"]["metadata"]["annotations"] if k.startswith("prometheus.io/")]


def test_prometheus_rule_alerts():
    rendered = render(CASES["all-roles"])
    (rule,) = rendered.of_kind("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    expected = {
        "ContosoNotifyNoReadyPods": "kube_deployment_status_replicas_available",
        "ContosoBackplaneDisconnected": "contoso_backplane_connected",
        "ContosoBackplaneSilent": "contoso_backplane_canary_ok",
        "ContosoEventsDeadLettered": "contoso_events_dead_lettered_total",
        "ContosoOutboxBacklog": "contoso_outbox_backlog",
        "ContosoHubHandshakeFailures": "contoso_hub_handshake_failures_total",
        "ContosoHttpErrors": "contoso_http_requests_total",
        "ContosoHttpLatency": "contoso_http_request_duration_seconds_bucket",
        "ContosoNotificationLatency": "contoso_notification_latency_seconds_bucket",
    }
    assert set(alerts) == set(expected)
    for name, metric in expected.items():
        expr = alerts[name]["expr"]
        assert metric in expr, name
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        assert f'namespace="{chartlib.NAMESPACE}"' in expr, name
        assert alerts[name]["labels"]["severity"] in ("warning", "critical")
        assert alerts[name]["annotations"]["summary"]
        assert alerts[name]["annotations"]["runbook_url"].startswith("OPERATIONS.md#"), name
    assert "contoso_backplane_connected{" in alerts["ContosoBackplaneDisconnected"]["expr"]
    assert alerts["ContosoBackplaneDisconnected"]["expr"].endswith("== 0")
    assert f'deployment="{rendered.by_role("Deployment")["notify"]["metadata"]["name"]}"' in alerts["ContosoNotifyNoReadyPods"]["expr"]


def test_prometheus_rule_skips_notify_alerts_without_notify():
    values = {"roles": {"notify": {"enabled": False}}, "metrics": {"prometheusRule": {"enabled": True}}}
    (rule,) = render(values).of_kind("PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    # accept still serves HTTP: its error and latency alerts stay.
    assert alerts == {"ContosoEventsDeadLettered", "ContosoOutboxBacklog", "ContosoHttpErrors", "ContosoHttpLatency"}


def test_grafana_dashboard_configmap():
    rendered = render(CASES["all-roles"])
    (cm,) = [c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["contoso.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "contoso_hub_connections",
        "contoso_hub_messages_sent_total",
        "contoso_hub_invocation_duration_seconds_bucket",
        "contoso_hub_connects_total",
        "contoso_hub_disconnects_total",
        "contoso_hub_queue_full_closes_total",
        "contoso_backplane_messages_received_total",
        "contoso_backplane_connected",
        "contoso_orders_accepted_total",
        "contoso_http_request_duration_seconds_bucket",
        "contoso_processing_duration_seconds_bucket",
        "contoso_notification_latency_seconds_bucket",
        "contoso_outbox_backlog",
        "rabbitmq_queue_messages_ready",
        "contoso_bus_reconnects_total",
    ):
        assert metric in exprs, metric
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Hub connections per pod", "Reconnects", "Queue depths", "Order throughput", "Notification latency p99 (SLO)"} <= titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")


def contoso_metrics_in(text: str) -> set[str]:
    return set(re.findall(r"\bcontoso_[a-z0-9_]+", text))


def test_dashboard_and_alerts_use_only_metrics_the_binary_exports():
    rendered = render(CASES["all-roles"])
    (cm,) = [c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    dashboard = json.loads(cm["data"]["contoso.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [q["query"]["query"] for q in dashboard["templating"]["list"] if isinstance(q.get("query"), dict)]
    (rule,) = rendered.of_kind("PrometheusRule")
    exprs += [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    exported = chartlib.metrics_in_src()
    assert "contoso_hub_connections" in exported, "metric constants not found under src/"
    used = contoso_metrics_in(" ".join(exprs))
    unknown = {m for m in used if m not in exported and HISTOGRAM_SERIES.sub("", m) not in exported}
    assert unknown == set(), f"metrics no code exports: {sorted(unknown)}"


# --- per-role releases --------------------------------------------------------------------------------------------


def test_one_release_per_role_gives_distinct_objects():
    """The per-role install of OPERATIONS.md: three releases in one namespace must not claim the same object."""
    seen = {}
    for role in ROLES:
        values = {"roles": {r: {"enabled": r == role} for r in ROLES}, "secrets": {"existingSecret": "contoso-secrets"}}
        for obj in render(values, release=f"contoso-{role}").objects:
            key = (obj["kind"], obj["metadata"]["name"])
            assert key not in seen, f"{key} made by both contoso-{seen.get(key)} and contoso-{role}"
            seen[key] = role
    assert ("Deployment", "contoso-notify") in seen


def test_notes_warn_about_missing_secrets(default):
    assert "WARNING: not set: CONTOSO_DATABASE_URL" in default.notes
    assert "WARNING" not in render(CASES["existing-secret"]).notes
