"""OPERATIONS.md must not drift from the binary: every CONTOSO_* variable and flag of src/config.rs is documented,
and the operator-facing facts it states match the chart's defaults."""

from __future__ import annotations

import re

import helm_python as helm
import pytest

import chartlib
from chartlib import REPO, render

OPERATIONS = REPO / "OPERATIONS.md"


@pytest.fixture(scope="module")
def operations() -> str:
    return OPERATIONS.read_text()


def test_config_rs_has_settings_to_check():
    assert len(chartlib.settings_in_config_rs()) >= 20
    assert "--drain-spread" in chartlib.flags_in_config_rs()


@pytest.mark.parametrize("variable", sorted(chartlib.settings_in_config_rs()))
def test_every_variable_of_config_rs_is_documented(operations, variable):
    assert f"`{variable}`" in operations, f"{variable} is missing from OPERATIONS.md"


@pytest.mark.parametrize("flag", sorted(chartlib.flags_in_config_rs()))
def test_every_flag_of_config_rs_is_in_the_settings_table(operations, flag):
    assert re.search(rf"^\| `{re.escape(flag)}` \| `CONTOSO_", operations, re.M), f"{flag} has no row in the settings table"


@pytest.mark.parametrize(
    ("flag", "variable"), [("--redis-mode", "CONTOSO_REDIS_MODE"), ("--backplane-pubsub", "CONTOSO_BACKPLANE_PUBSUB")]
)
def test_settings_table_names_every_value_the_chart_offers(operations, flag, variable):
    """The rows of the enum settings name each value the values schema allows."""
    with helm.Chart.load(chartlib.CHART) as chart:
        allowed = chart.schema["definitions"]["settings"]["properties"][variable]["enum"]
    row = re.search(rf"^\| `{re.escape(flag)}` \| `{variable}` \|.*$", operations, re.M)
    assert row, f"{flag} has no row in the settings table"
    for value in allowed:
        assert f"`{value}`" in row[0], f"the {flag} row does not name `{value}`"


def test_documented_install_commands_match_the_chart(operations):
    assert "helm install contoso charts/contoso" in operations
    for role in chartlib.ROLES:
        assert f"helm install contoso-{role} " in operations
    # The grace period the document quotes is the one the chart computes.
    dep = render({}).by_role("Deployment")["notify"]
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert f"15 + 5 + 25 + 5 = {grace} s" in operations


def test_backplane_interop_names_match_the_defaults(operations):
    config = [c for c in render({}).of_kind("ConfigMap") if c["metadata"]["name"].endswith("-config")][0]["data"]
    assert f"CONTOSO_CHANNEL_PREFIX={config['CONTOSO_CHANNEL_PREFIX']}" in operations
    assert config["CONTOSO_HUB_NAME"] in operations
    assert "ResumeNotifications" in operations and "allowReconnect" in operations


def documented_metrics(operations: str) -> set[str]:
    """The metric names of the table in "Metrics and alerts" (rows starting with a `contoso_*` name)."""
    rows = [line for line in operations.splitlines() if line.startswith("| `contoso_")]
    return {name for row in rows for name in re.findall(r"`(contoso_[a-z0-9_]+)", row.split(" | ")[0])}


def test_metrics_table_matches_the_binary(operations):
    exported = chartlib.metrics_in_src()
    documented = documented_metrics(operations)
    assert exported - documented == set(), "metrics the binary exports but OPERATIONS.md does not list"
    assert documented - exported == set(), "metrics OPERATIONS.md lists but no code exports"


@pytest.mark.parametrize(
    "key",
    [
        "adminPort",
        "httpRoute.enabled",
        "httpRoute.parentRefs",
        "httpRoute.hubTimeouts",
        "networkPolicy.enabled",
        "networkPolicy.ingressFrom",
        "networkPolicy.metricsFrom",
        "networkPolicy.egress.restrict",
        "networkPolicy.egress.extraRules",
        "helmTest.enabled",
        "helmTest.attempts",
        "roles.process.keda.enabled",
        "extraVolumes",
        "extraVolumeMounts",
        "initContainers",
    ],
)
def test_chart_options_are_documented(operations, key):
    assert f"`{key}" in operations, f"{key} is missing from OPERATIONS.md"


def test_documented_chart_option_defaults_match_the_chart(operations):
    assert "ingress-nginx" in operations and "retired" in operations
    values = helm.Chart.load(chartlib.CHART).values
    keda = values["roles"]["process"]["keda"]
    assert f"`queueLength` ready messages per pod, {keda['queueLength']} by default" in operations
    assert f"`minReplicaCount` {keda['minReplicaCount']} and `maxReplicaCount` {keda['maxReplicaCount']}" in operations
    rendered = render({"secrets": {"CONTOSO_AMQP_URL": "amqp://mq"}, "roles": {"process": {"keda": {"enabled": True}}}})
    (scaled,) = rendered.of_kind("ScaledObject")
    assert f"`{scaled['spec']['triggers'][0]['metadata']['queueName']}`" in operations
    egress = values["networkPolicy"]["egress"]
    ports = ", ".join(str(egress[s]["ports"][0]) for s in ("postgresql", "redis", "rabbitmq"))
    assert f"ports {ports};" in operations
    assert f"`{values['helmTest']['image']['repository']}` at a pinned tag" in operations


def test_documented_admin_port_matches_the_chart(operations):
    """The settings table names the value behind CONTOSO_ADMIN_LISTEN and its address, and the probe, metrics and
    port-forward text quote the chart's admin port."""
    values = helm.Chart.load(chartlib.CHART).values
    port = values["adminPort"]
    row = re.search(r"^\| `--admin-listen` \| `CONTOSO_ADMIN_LISTEN` \| [^|]+ \| `adminPort` \(`0\.0\.0\.0:(\d+)`\) \|", operations, re.M)
    assert row, "the settings table does not name adminPort for --admin-listen"
    env = chartlib.env_of(render({}).by_role("Deployment")["notify"])
    assert env["CONTOSO_ADMIN_LISTEN"] == f"0.0.0.0:{row[1]}" == f"0.0.0.0:{port}"
    assert f"(`adminPort`, {port}" in operations
    assert f"port-forward deploy/contoso-notify {port}:{port}" in operations
    assert "`<role>-admin`" in operations


SCALING = REPO / "SCALING.md"


def scaling_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", SCALING.read_text(), flags=re.S)


def test_scaling_md_has_chart_values_for_three_sizes():
    assert len(scaling_blocks()) == 3


@pytest.mark.parametrize("block", range(3))
def test_scaling_md_chart_values_render(block):
    values = chartlib.yaml.safe_load(scaling_blocks()[block])
    rendered = render(values)
    hpas = {h["metadata"]["name"]: h for h in rendered.of_kind("HorizontalPodAutoscaler")}
    notify = next(h for name, h in hpas.items() if name.endswith("notify"))
    assert notify["spec"]["minReplicas"] == values["roles"]["notify"]["autoscaling"]["minReplicas"]
