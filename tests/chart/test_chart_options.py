"""Tests of the chart's opt-in extras: NetworkPolicies, the Gateway API HTTPRoute, the `helm test` Pod, KEDA scaling of
process, and extra volumes, mounts and init containers. Each renders the objects and checks the fields that make the
feature work (the matrix tests of test_chart.py also validate them against the Kubernetes and CRD schemas)."""

from __future__ import annotations

import copy
import re

import helm_python as helm
import pytest

import chartlib
from chartlib import ADMIN_PORT, CASES, HTTP_PORT, NAMESPACE, REPO, ROLES, container, refused_by_schema, render

OPTIONS = CASES["options"]
HTTP = [{"port": HTTP_PORT, "protocol": "TCP"}]
ADMIN = [{"port": ADMIN_PORT, "protocol": "TCP"}]
GATEWAY_PEERS = OPTIONS["networkPolicy"]["ingressFrom"]
MONITORING_PEERS = OPTIONS["networkPolicy"]["metricsFrom"]
SECRETS = {"CONTOSO_AMQP_URL": "amqp://contoso:pw@mq:5672/%2f"}


def with_values(base: dict, **changes) -> dict:
    """base with top-level keys replaced (deep-copied, so the shared cases stay untouched)."""
    out = copy.deepcopy(base)
    out.update(copy.deepcopy(changes))
    return out


def only(role: str, values: dict | None = None) -> dict:
    """values for a release of one role."""
    out = copy.deepcopy(values or {})
    roles = out.setdefault("roles", {})
    for r in ROLES:
        roles.setdefault(r, {})["enabled"] = r == role
    return out



# --- NetworkPolicy ------------------------------------------------------------------------------------------------


def test_network_policies_are_opt_in(default):
    assert default.of_kind("NetworkPolicy") == []


def test_one_network_policy_per_enabled_role_selecting_its_pods():
    for values in (OPTIONS, only("notify", OPTIONS), {"networkPolicy": {"enabled": True}}):
        rendered = render(values)
        policies = rendered.by_role("NetworkPolicy")
        deployments = rendered.by_role("Deployment")
        assert set(policies) == set(deployments)
        for role, policy in policies.items():
            assert policy["metadata"]["name"] == deployments[role]["metadata"]["name"]
            assert policy["spec"]["podSelector"] == {"matchLabels": deployments[role]["spec"]["selector"]["matchLabels"]}


def test_network_policy_defaults_open_only_the_two_ports_and_all_egress():
    """Enabled without peers: anyone may reach the HTTP port of accept and notify and the admin port of every role (and
    no other port; process has no HTTP API), egress is not restricted."""
    rendered = render({"networkPolicy": {"enabled": True}})
    for role, policy in rendered.by_role("NetworkPolicy").items():
        assert policy["spec"]["policyTypes"] == ["Ingress"], role
        expected = [{"ports": ADMIN}] if role == "process" else [{"ports": HTTP}, {"ports": ADMIN}]
        assert policy["spec"]["ingress"] == expected, role
        assert "egress" not in policy["spec"], role


def test_network_policy_ports_follow_the_container_and_admin_ports():
    rendered = render({"networkPolicy": {"enabled": True}, "containerPort": 8081, "adminPort": 9191})
    for role, policy in rendered.by_role("NetworkPolicy").items():
        admin = {"ports": [{"port": 9191, "protocol": "TCP"}]}
        expected = [admin] if role == "process" else [{"ports": [{"port": 8081, "protocol": "TCP"}]}, admin]
        assert policy["spec"]["ingress"] == expected, role
        ports = {p["name"]: p["containerPort"] for p in container(rendered.by_role("Deployment")[role])["ports"]}
        assert ports == ({"admin": 9191} if role == "process" else {"http": 8081, "admin": 9191}), role


def test_network_policy_lets_in_the_gateway_monitoring_and_the_test_pod():
    """The Gateway reaches the HTTP port only; Prometheus and the helm test Pod (which asks /health/ready there) the
    admin port only."""
    rendered = render(OPTIONS)
    (test_pod,) = rendered.of_kind("Pod")
    test_peer = {"podSelector": {"matchLabels": {k: test_pod["metadata"]["labels"][k] for k in (
        "app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component")}}}
    policies = rendered.by_role("NetworkPolicy")
    for role in ("accept", "notify"):
        assert policies[role]["spec"]["ingress"] == [
            {"ports": HTTP, "from": GATEWAY_PEERS},
            {"ports": ADMIN, "from": MONITORING_PEERS + [test_peer]},
        ], role
    # process serves only /health and /metrics, on the admin port: scrapes (and helm test) only.
    assert policies["process"]["spec"]["ingress"] == [{"ports": ADMIN, "from": MONITORING_PEERS + [test_peer]}]


@pytest.mark.parametrize(
    "network_policy",
    [
        {"ingressFrom": GATEWAY_PEERS},
        {"metricsFrom": MONITORING_PEERS},
        {"ingressFrom": GATEWAY_PEERS, "metricsFrom": MONITORING_PEERS},
    ],
    ids=["ingress-peers", "metrics-peers", "both"],
)
def test_network_policy_peer_lists_each_open_their_own_port_only(network_policy):
    """ingressFrom never reaches the admin port, metricsFrom never the HTTP port; an empty list opens its port (and only
    it) to anyone, which no longer undoes the other list now that the two are apart."""
    values = {"networkPolicy": {"enabled": True, **network_policy}}
    policies = render(values).by_role("NetworkPolicy")
    gateway = {"ports": HTTP, "from": GATEWAY_PEERS} if "ingressFrom" in network_policy else {"ports": HTTP}
    monitoring = {"ports": ADMIN, "from": MONITORING_PEERS} if "metricsFrom" in network_policy else {"ports": ADMIN}
    for role in ("accept", "notify"):
        assert policies[role]["spec"]["ingress"] == [gateway, monitoring], role
    assert policies["process"]["spec"]["ingress"] == [monitoring]


def test_network_policy_restricted_egress_allows_dns_and_the_three_services():
    rendered = render(OPTIONS)
    for role, policy in rendered.by_role("NetworkPolicy").items():
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"], role
        assert policy["spec"]["egress"] == [
            {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
            {"ports": [{"port": 5432, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]},
            {"ports": [{"port": 6379, "protocol": "TCP"}]},
            {"ports": [{"port": 5672, "protocol": "TCP"}]},
        ], role


def test_network_policy_egress_destinations_come_from_values():
    kube_dns = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                 "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]
    extra = [{"to": [{"podSelector": {"matchLabels": {"app": "postgres"}}}], "ports": [{"port": 5432, "protocol": "TCP"}]}]
    values = {"networkPolicy": {"enabled": True, "egress": {
        "restrict": True,
        "dnsTo": kube_dns,
        "postgresql": {"cidrs": [], "ports": []},
        "redis": {"cidrs": ["10.1.0.10/32", "10.1.0.11/32"], "ports": [6379, 26379]},
        "rabbitmq": {"cidrs": ["10.2.0.0/24"], "ports": [5671]},
        "extraRules": extra,
    }}}
    policy = render(values).by_role("NetworkPolicy")["notify"]
    assert policy["spec"]["egress"] == [
        {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}], "to": kube_dns},
        {"ports": [{"port": 6379, "protocol": "TCP"}, {"port": 26379, "protocol": "TCP"}],
         "to": [{"ipBlock": {"cidr": "10.1.0.10/32"}}, {"ipBlock": {"cidr": "10.1.0.11/32"}}]},
        {"ports": [{"port": 5671, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "10.2.0.0/24"}}]},
        *extra,
    ]


@pytest.mark.parametrize(
    "values",
    [
        {"networkPolicy": {"enable": True}},
        {"networkPolicy": {"egress": {"restricted": True}}},
        {"networkPolicy": {"ingressFrom": [{"namespace": "ingress-nginx"}]}},
        {"networkPolicy": {"ingressFrom": [{"namespaceSelector": {"matchLabel": {"a": "b"}}}]}},
        {"networkPolicy": {"egress": {"redis": {"cidrs": ["10.0.0.1"]}}}},
        {"networkPolicy": {"egress": {"redis": {"ports": ["6379"]}}}},
    ],
    ids=["enable", "restricted", "peer-key", "selector-key", "cidr-without-prefix", "port-as-string"],
)
def test_network_policy_mistakes_fail_schema_validation(values):
    refused_by_schema(values)


# --- HTTPRoute ----------------------------------------------------------------------------------------------------


def route_table(route: dict) -> dict[str, tuple[str, int]]:
    """path -> (Service, port) of an HTTPRoute, checking each rule is one PathPrefix match to one backend."""
    table = {}
    for rule in route["spec"]["rules"]:
        (match,) = rule["matches"]
        assert match["path"]["type"] == "PathPrefix"
        assert set(match) == {"path"}, "no header or query matches"
        (backend,) = rule["backendRefs"]
        assert set(backend) == {"name", "port"}, "a plain Service backend, no weights or filters"
        assert "filters" not in rule
        table[match["path"]["value"]] = (backend["name"], backend["port"])
    return table


def ingress_table(rendered: chartlib.Rendered) -> dict[str, tuple[str, int]]:
    (ingress,) = rendered.of_kind("Ingress")
    ports = {svc["metadata"]["name"]: svc["spec"]["ports"][0]["port"] for svc in rendered.of_kind("Service")}
    return {
        p["path"]: (p["backend"]["service"]["name"], ports[p["backend"]["service"]["name"]])
        for rule in ingress["spec"]["rules"]
        for p in rule["http"]["paths"]
    }


def test_http_route_is_opt_in(default):
    assert default.of_kind("HTTPRoute") == []


def test_http_route_routes_hub_to_notify_and_the_rest_to_accept_like_the_ingress():
    rendered = render(OPTIONS)
    (route,) = rendered.of_kind("HTTPRoute")
    services = {role: svc["metadata"]["name"] for role, svc in rendered.services("http").items()}
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route_table(route) == {
        "/hubs/order-status": (services["notify"], 80),
        "/api": (services["accept"], 80),
        "/": (services["accept"], 80),
    }
    assert route_table(route) == ingress_table(rendered)
    assert route["spec"]["parentRefs"] == OPTIONS["httpRoute"]["parentRefs"]
    assert route["spec"]["hostnames"] == ["shop.example.com"]
    # WebSockets need nothing special: no annotations, filters or timeouts unless asked for.
    assert "annotations" not in route["metadata"]
    assert all("timeouts" not in rule for rule in route["spec"]["rules"])


@pytest.mark.parametrize("role,paths", [("accept", {"/api", "/"}), ("notify", {"/hubs/order-status"})])
def test_http_route_of_a_per_role_release_carries_only_its_paths(role, paths):
    rendered = render(only(role, OPTIONS), release=f"contoso-{role}")
    (route,) = rendered.of_kind("HTTPRoute")
    assert route["metadata"]["name"] == f"contoso-{role}"
    assert set(route_table(route)) == paths
    assert {svc for svc, _ in route_table(route).values()} == {f"contoso-{role}"}


def test_http_route_is_left_out_without_an_http_role():
    assert render(only("process", OPTIONS), release="contoso-process").of_kind("HTTPRoute") == []


def test_http_route_follows_service_ports_hostnames_and_hub_timeouts():
    values = {
        "roles": {"notify": {"service": {"port": 8081}}, "accept": {"service": {"port": 8082}}},
        "httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}], "hubTimeouts": {"request": "0s"},
                      "annotations": {"example.com/owner": "shop"}},
    }
    (route,) = render(values).of_kind("HTTPRoute")
    assert route_table(route) == {
        "/hubs/order-status": ("contoso-notify", 8081), "/api": ("contoso-accept", 8082), "/": ("contoso-accept", 8082)}
    assert "hostnames" not in route["spec"], "empty: the listener's hostnames"
    assert route["spec"]["parentRefs"] == [{"name": "gw"}]
    timeouts = {r["matches"][0]["path"]["value"]: r.get("timeouts") for r in route["spec"]["rules"]}
    assert timeouts == {"/hubs/order-status": {"request": "0s"}, "/api": None, "/": None}
    assert route["metadata"]["annotations"] == {"example.com/owner": "shop"}
    assert chartlib.custom_resource_problems(route) == []


def test_http_route_and_ingress_can_run_side_by_side_or_alone():
    both = render(OPTIONS)
    assert len(both.of_kind("Ingress")) == 1 and len(both.of_kind("HTTPRoute")) == 1
    route_only = render(with_values(OPTIONS, ingress={"enabled": False}))
    assert route_only.of_kind("Ingress") == [] and len(route_only.of_kind("HTTPRoute")) == 1


@pytest.mark.parametrize(
    "values",
    [
        {"httpRoute": {"enabled": True}},
        {"httpRoute": {"enabled": True, "parentRefs": []}},
        {"httpRoute": {"enabled": True, "parentRefs": [{"gateway": "gw"}]}},
        {"httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}], "hostnames": ["Shop.Example.com"]}},
        {"httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}], "hubTimeouts": {"idle": "1h"}}},
        {"httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}], "annotations": {"example.com/session-affinity": "on"}}},
        {"httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}], "host": "shop.example.com"}},
    ],
    ids=["no-parent-refs", "empty-parent-refs", "parent-ref-key", "hostname-case", "timeout-key", "sticky-annotation", "unknown-key"],
)
def test_http_route_mistakes_fail_schema_validation(values):
    refused_by_schema(values)


# --- helm test ----------------------------------------------------------------------------------------------------


def hook_pods(rendered: chartlib.Rendered) -> list[dict]:
    """The Pods `helm test` runs (annotation helm.sh/hook: test)."""
    return [p for p in rendered.of_kind("Pod") if p["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]


def test_helm_test_is_opt_in(default):
    assert default.of_kind("Pod") == []


def test_helm_test_pod_checks_readiness_of_every_role_on_the_admin_port():
    rendered = render(OPTIONS)
    (pod,) = hook_pods(rendered)
    assert pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    services = rendered.services("admin")
    assert set(services) == set(ROLES)
    checked = {}
    for c in spec["containers"]:
        command = c["command"]
        assert command[0] == "curl" and "--fail" in command, command
        assert int(command[command.index("--retry") + 1]) >= 1
        assert int(command[command.index("--max-time") + 1]) <= 10
        checked[c["name"]] = command[-1]
        assert c["image"] == "curlimages/curl:8.11.1"
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["runAsNonRoot"] is True
    # /health/* is on the admin port only (the public port answers 404): each role's admin Service, on that port.
    assert checked == {
        role: f"http://{svc['metadata']['name']}.{NAMESPACE}.svc:{ADMIN_PORT}/health/ready"
        for role, svc in services.items()
    }
    assert {svc["spec"]["ports"][0]["port"] for svc in services.values()} == {ADMIN_PORT}
    public = {svc["metadata"]["name"] for svc in rendered.services("http").values()}
    assert not [url for url in checked.values() if any(f"//{name}." in url for name in public)]


def test_helm_test_pod_follows_the_roles_of_the_release():
    """The admin port, never a public Service's port; process too, though it has no public Service."""
    values = {"helmTest": {"enabled": True}, "adminPort": 9191, "roles": {"notify": {"service": {"port": 8081}}}}
    (pod,) = hook_pods(render(values))
    urls = {c["name"]: c["command"][-1] for c in pod["spec"]["containers"]}
    assert urls == {
        "accept": f"http://contoso-accept-admin.{NAMESPACE}.svc:9191/health/ready",
        "process": f"http://contoso-process-admin.{NAMESPACE}.svc:9191/health/ready",
        "notify": f"http://contoso-notify-admin.{NAMESPACE}.svc:9191/health/ready",
    }
    (pod,) = hook_pods(render(only("notify", {"helmTest": {"enabled": True}}), release="contoso-notify"))
    assert pod["metadata"]["name"] == "contoso-notify-test"
    assert [c["name"] for c in pod["spec"]["containers"]] == ["notify"]
    assert pod["spec"]["containers"][0]["command"][-1] == f"http://contoso-notify-admin.{NAMESPACE}.svc:{ADMIN_PORT}/health/ready"
    (pod,) = hook_pods(render(only("process", {"helmTest": {"enabled": True}}), release="contoso-process"))
    assert [c["command"][-1] for c in pod["spec"]["containers"]] == [
        f"http://contoso-process-admin.{NAMESPACE}.svc:{ADMIN_PORT}/health/ready"]


def test_helm_test_image_is_configurable_and_pinned():
    digest = "sha256:" + "a" * 64
    values = {"helmTest": {"enabled": True, "attempts": 3, "image": {
        "repository": "registry.example.com/curl", "tag": "8.11.1", "digest": digest, "pullPolicy": "Always"}}}
    (pod,) = hook_pods(render(values))
    for c in pod["spec"]["containers"]:
        assert c["image"] == f"registry.example.com/curl@{digest}"
        assert c["imagePullPolicy"] == "Always"
        assert c["command"][c["command"].index("--retry") + 1] == "2", "attempts: the first try and two retries"
    for tag in ("latest", ""):
        refused_by_schema({"helmTest": {"image": {"repository": "curlimages/curl", "tag": tag, "pullPolicy": "IfNotPresent"}}})


# --- KEDA ---------------------------------------------------------------------------------------------------------


def process_queue_in_source() -> str:
    """The process queue's contract name, as src/bus/topology.rs defines it."""
    text = (REPO / "src" / "bus" / "topology.rs").read_text()
    (name,) = re.findall(r'Queue::OrderProcess => "([^"]+)"', text)
    return name


def keda_objects(rendered: chartlib.Rendered) -> tuple[dict, dict]:
    (scaled,) = rendered.of_kind("ScaledObject")
    (auth,) = rendered.of_kind("TriggerAuthentication")
    return scaled, auth


def test_keda_is_opt_in(default):
    assert default.of_kind("ScaledObject") == [] and default.of_kind("TriggerAuthentication") == []
    assert "process" in default.by_role("HorizontalPodAutoscaler")


def test_keda_replaces_the_process_hpa():
    """Two autoscalers on one Deployment fight: with KEDA, process has a ScaledObject and no HPA of the chart."""
    rendered = render(OPTIONS)
    hpas = rendered.by_role("HorizontalPodAutoscaler")
    assert set(hpas) == {"accept", "notify"}
    deployment = rendered.by_role("Deployment")["process"]
    assert not [h for h in rendered.of_kind("HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]]
    scaled, _ = keda_objects(rendered)
    assert scaled["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert "replicas" not in deployment["spec"], "a fixed replica count would fight KEDA"
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 8)
    # Also when the CPU autoscaling switch is off: KEDA still owns the replica count.
    values = with_values(OPTIONS, roles={"process": {"keda": {"enabled": True}, "autoscaling": {"enabled": False}}})
    rendered = render(values)
    assert "process" not in rendered.by_role("HorizontalPodAutoscaler")
    assert "replicas" not in rendered.by_role("Deployment")["process"]["spec"]
    assert len(rendered.of_kind("ScaledObject")) == 1


def test_keda_scales_on_the_prefixed_process_queue_with_the_chart_secret():
    rendered = render(OPTIONS)
    scaled, auth = keda_objects(rendered)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["queueName"] == "staging." + process_queue_in_source() == "staging.contoso.order-process"
    assert trigger["metadata"]["mode"] == "QueueLength"
    assert trigger["metadata"]["value"] == "50"
    assert trigger["metadata"]["protocol"] == "auto"
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    # The AMQP URL the pods get through envFrom.
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "host", "name": "contoso-secrets", "key": "CONTOSO_AMQP_URL"}]
    env_from = container(rendered.by_role("Deployment")["process"])["envFrom"]
    assert {"secretRef": {"name": "contoso-secrets"}} in env_from


@pytest.mark.parametrize(
    "config,role_config,queue",
    [
        ({}, {}, "contoso.order-process"),
        ({"CONTOSO_BUS_PREFIX": "blue-"}, {}, "blue-contoso.order-process"),
        ({"CONTOSO_BUS_PREFIX": "blue-"}, {"CONTOSO_BUS_PREFIX": "green-"}, "green-contoso.order-process"),
        ({"CONTOSO_BUS_PREFIX": "blue-"}, {"CONTOSO_BUS_PREFIX": ""}, "contoso.order-process"),
    ],
    ids=["no-prefix", "shared-prefix", "role-prefix-wins", "role-empties-it"],
)
def test_keda_queue_name_follows_the_bus_prefix_the_process_pods_get(config, role_config, queue):
    values = {"secrets": SECRETS, "config": config, "roles": {"process": {"config": role_config, "keda": {"enabled": True}}}}
    rendered = render(values)
    scaled, _ = keda_objects(rendered)
    assert scaled["spec"]["triggers"][0]["metadata"]["queueName"] == queue
    prefix = chartlib.pod_env(rendered, rendered.by_role("Deployment")["process"]).get("CONTOSO_BUS_PREFIX", "")
    assert prefix + process_queue_in_source() == queue
    assert f"on queue {queue}" in rendered.notes


def test_keda_reads_the_chart_made_secret_or_the_one_named():
    rendered = render({"secrets": SECRETS, "roles": {"process": {"keda": {"enabled": True}}}})
    _, auth = keda_objects(rendered)
    (secret,) = rendered.of_kind("Secret")
    ref = auth["spec"]["secretTargetRef"][0]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["data"]
    named = {"roles": {"process": {"keda": {"enabled": True, "authSecret": {"name": "rabbitmq-management", "key": "url"}}}}}
    _, auth = keda_objects(render(named))
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "host", "name": "rabbitmq-management", "key": "url"}]


def test_keda_options_reach_the_scaled_object():
    behavior = {"scaleDown": {"stabilizationWindowSeconds": 600}}
    values = {"secrets": SECRETS, "roles": {"process": {"keda": {
        "enabled": True, "minReplicaCount": 0, "maxReplicaCount": 20, "queueLength": 200, "activationQueueLength": 5,
        "pollingInterval": 5, "cooldownPeriod": 120, "behavior": behavior}}}}
    scaled, _ = keda_objects(render(values))
    spec = scaled["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"], spec["pollingInterval"], spec["cooldownPeriod"]) == (0, 20, 5, 120)
    assert spec["triggers"][0]["metadata"]["value"] == "200"
    assert spec["triggers"][0]["metadata"]["activationValue"] == "5"
    assert spec["advanced"] == {"horizontalPodAutoscalerConfig": {"behavior": behavior}}
    assert chartlib.custom_resource_problems(scaled) == []


def test_keda_without_an_amqp_url_fails():
    with pytest.raises(helm.HelmError, match="AMQP URL"):
        render({"roles": {"process": {"keda": {"enabled": True}}}})


def test_keda_min_above_max_fails():
    with pytest.raises(helm.HelmError, match="minReplicaCount"):
        render({"secrets": SECRETS, "roles": {"process": {"keda": {"enabled": True, "minReplicaCount": 5, "maxReplicaCount": 2}}}})


def test_keda_is_left_out_when_process_is_not_in_the_release():
    rendered = render(only("notify", OPTIONS), release="contoso-notify")
    assert rendered.of_kind("ScaledObject") == [] and rendered.of_kind("TriggerAuthentication") == []


@pytest.mark.parametrize(
    "values",
    [
        {"roles": {"notify": {"keda": {"enabled": False}}}},
        {"roles": {"accept": {"keda": {"enabled": True}}}},
        {"roles": {"process": {"keda": {"enabled": True, "queue": "orders"}}}},
        {"roles": {"process": {"keda": {"enabled": "yes"}}}},
        {"roles": {"process": {"keda": {"maxReplicaCount": 0}}}},
    ],
    ids=["on-notify", "on-accept", "unknown-key", "not-boolean", "zero-max"],
)
def test_keda_mistakes_fail_schema_validation(values):
    refused_by_schema(values)


# --- extra volumes, mounts and init containers --------------------------------------------------------------------


def test_extra_volumes_mounts_and_init_containers_reach_every_deployment():
    rendered = render(OPTIONS)
    shared_volume = OPTIONS["extraVolumes"][0]
    shared_mount = OPTIONS["extraVolumeMounts"][0]
    (init,) = OPTIONS["initContainers"]
    for role, dep in rendered.by_role("Deployment").items():
        pod = dep["spec"]["template"]["spec"]
        assert pod["initContainers"] == [init], role
        volumes = pod["volumes"]
        mounts = container(dep)["volumeMounts"]
        assert [v["name"] for v in volumes][0] == "tmp", "the chart's own volumes first"
        assert shared_volume in volumes and shared_mount in mounts, role
        if role == "process":
            assert volumes[-2:] == [shared_volume, {"name": "scratch", "emptyDir": {"sizeLimit": "64Mi"}}]
            assert mounts[-2:] == [shared_mount, {"name": "scratch", "mountPath": "/scratch"}]
        else:
            assert volumes[-1] == shared_volume and mounts[-1] == shared_mount, role
            assert "scratch" not in {v["name"] for v in volumes}, role


def test_default_pods_have_no_extras(default):
    for role, dep in default.by_role("Deployment").items():
        pod = dep["spec"]["template"]["spec"]
        assert "initContainers" not in pod, role
        assert [v["name"] for v in pod["volumes"]] == ["tmp"], role
        assert [m["name"] for m in container(dep)["volumeMounts"]] == ["tmp"], role


def test_role_init_containers_run_after_the_shared_ones():
    shared = {"name": "shared", "image": "busybox:1.37", "command": ["true"]}
    own = {"name": "migrate-check", "image": "busybox:1.37", "command": ["true"]}
    deployments = render({"initContainers": [shared], "roles": {"notify": {"initContainers": [own]}}}).by_role("Deployment")
    assert deployments["notify"]["spec"]["template"]["spec"]["initContainers"] == [shared, own]
    assert deployments["accept"]["spec"]["template"]["spec"]["initContainers"] == [shared]
    assert deployments["process"]["spec"]["template"]["spec"]["initContainers"] == [shared]


@pytest.mark.parametrize(
    "values",
    [
        {"extraVolumes": [{"name": "tmp", "emptyDir": {}}]},
        {"roles": {"notify": {"extraVolumes": [{"name": "certs", "emptyDir": {}}]}}, "extraVolumes": [{"name": "certs", "emptyDir": {}}]},
        {"jwtPublicKey": {"existingSecret": "jwt"}, "config": {"CONTOSO_JWT_AUDIENCE": "shop"},
         "extraVolumes": [{"name": "jwt-public-key", "emptyDir": {}}]},
    ],
    ids=["chart-tmp", "shared-and-role", "chart-jwt-key"],
)
def test_duplicate_volume_names_fail(values):
    with pytest.raises(helm.HelmError, match="used twice"):
        render(values)


@pytest.mark.parametrize(
    "values",
    [
        {"extraVolumes": [{"emptyDir": {}}]},
        {"extraVolumes": [{"name": "certs"}]},
        {"extraVolumes": [{"name": "Certs", "emptyDir": {}}]},
        {"extraVolumeMounts": [{"name": "certs"}]},
        {"extraVolumeMounts": [{"name": "certs", "mountPath": "/certs", "readonly": True}]},
        {"extraVolumeMounts": [{"name": "certs", "mountPath": "certs"}]},
        {"initContainers": [{"name": "init"}]},
        {"roles": {"notify": {"initContainers": [{"image": "busybox:1.37"}]}}},
        {"roles": {"process": {"extraVolume": []}}},
    ],
    ids=["volume-without-name", "volume-without-source", "volume-name-case", "mount-without-path", "mount-key",
         "relative-mount-path", "init-without-image", "role-init-without-name", "role-key"],
)
def test_extras_mistakes_fail_schema_validation(values):
    refused_by_schema(values)


# --- all together -------------------------------------------------------------------------------------------------


def test_one_release_per_role_with_every_option_gives_distinct_objects():
    """The per-role install of OPERATIONS.md with the extras on: no two releases claim the same object."""
    seen = {}
    for role in ROLES:
        for obj in render(only(role, OPTIONS), release=f"contoso-{role}").objects:
            key = (obj["kind"], obj["metadata"]["name"])
            assert key not in seen, f"{key} made by both contoso-{seen.get(key)} and contoso-{role}"
            seen[key] = role
    for kind, name in [("ScaledObject", "contoso-process"), ("NetworkPolicy", "contoso-notify"),
                       ("HTTPRoute", "contoso-accept"), ("Pod", "contoso-notify-test"), ("Pod", "contoso-process-test"),
                       ("Service", "contoso-process-admin"), ("Service", "contoso-notify-admin")]:
        assert (kind, name) in seen, (kind, name)


def test_notes_name_the_http_route_and_helm_test():
    notes = render(OPTIONS).notes
    assert "Through the HTTPRoute contoso (Gateway gateway-system/shop-gateway) at shop.example.com" in notes
    assert f"helm test contoso --namespace {NAMESPACE}" in notes
    assert "KEDA 1-8 pods on queue staging.contoso.order-process" in notes
