"""Tests of the chart's observability: the alerts on HTTP errors, HTTP latency and end-to-end notification latency (the
SLO) with their values-driven thresholds and runbook links, the p50/p99 latency panels of the Grafana dashboard, and the
schema that guards the thresholds. test_chart.py checks the rule and the dashboard as a whole (metrics the binary
exports, the ConfigMap)."""

from __future__ import annotations

import copy
import json
import re

import helm_python as helm
import pytest

import chartlib
from chartlib import CASES, CHART, NAMESPACE, REPO, SRC, refused_by_schema, render

OPERATIONS = REPO / "OPERATIONS.md"
ALL_ROLES = CASES["all-roles"]
SEL = f'namespace="{NAMESPACE}"'
# The routes the HTTP alerts and panels leave out: probes and scrapes.
NOT_USER_TRAFFIC = 'route!~"/health/.*|/metrics"'
# alert -> (threshold key under metrics.prometheusRule, severity, runbook anchor in OPERATIONS.md)
NEW_ALERTS = {
    "ContosoHttpErrors": ("httpErrorsPercent", "critical", "contosohttperrors"),
    "ContosoHttpLatency": ("httpLatencyP99Seconds", "warning", "contosohttplatency"),
    "ContosoNotificationLatency": ("notificationLatencyP99Seconds", "critical", "contosonotificationlatency"),
}
# Every latency histogram of the binary, and the label the dashboard splits its quantiles by (None: all together).
LATENCY_HISTOGRAMS = {
    "contoso_http_request_duration_seconds": "route",
    "contoso_processing_duration_seconds": "queue",
    "contoso_hub_invocation_duration_seconds": "method",
    "contoso_notification_latency_seconds": None,
}
# histogram_quantile(q, sum by (labels) (rate(<histogram>_bucket{matchers}[window])))
QUANTILE = re.compile(
    r"histogram_quantile\((?P<q>[0-9.]+), sum by \((?P<by>[^)]*)\) "
    r"\(rate\((?P<metric>[a-z_]+)_bucket\{(?P<matchers>[^}]*)\}\[(?P<window>[^\]]+)\]\)\)\)"
)


def chart_values() -> dict:
    with helm.Chart.load(CHART) as chart:
        return copy.deepcopy(chart.values)


def rule_defaults() -> dict:
    return chart_values()["metrics"]["prometheusRule"]


def alerts_of(values: dict, release: str = chartlib.RELEASE) -> dict[str, dict]:
    rules = render(values, release=release).of_kind("PrometheusRule")
    return {r["alert"]: r for rule in rules for g in rule["spec"]["groups"] for r in g["rules"]}


def with_rule(values: dict, **rule) -> dict:
    out = copy.deepcopy(values)
    out["metrics"]["prometheusRule"].update(rule)
    return out


def only(role: str) -> dict:
    out = with_rule(ALL_ROLES)
    for r in chartlib.ROLES:
        out["roles"].setdefault(r, {})["enabled"] = r == role
    return out


def threshold_of(expr: str) -> str:
    match = re.search(r" > ([0-9.e+-]+)$", expr)
    assert match, f"no '> threshold' at the end of {expr!r}"
    return match[1]


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file: lower-cased, punctuation but - and _ dropped, spaces
    to -, a -N suffix on repeats."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


@pytest.fixture(scope="module")
def dashboard() -> dict:
    (cm,) = [c for c in render(ALL_ROLES).of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    return json.loads(cm["data"]["contoso.json"])


def quantiles(dashboard: dict) -> list[tuple[dict, dict, re.Match]]:
    """(panel, target, parsed query) of every histogram_quantile target of the dashboard."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for match in QUANTILE.finditer(target["expr"]):
                out.append((panel, target, match))
    return out


# --- alerts -------------------------------------------------------------------------------------------------------


def test_new_alerts_carry_the_default_thresholds_severity_and_runbook():
    defaults = rule_defaults()
    assert (defaults["httpErrorsPercent"], defaults["httpLatencyP99Seconds"], defaults["notificationLatencyP99Seconds"]) == (5, 1, 5)
    alerts = alerts_of(ALL_ROLES)
    for name, (key, severity, anchor) in NEW_ALERTS.items():
        alert = alerts[name]
        assert threshold_of(alert["expr"]) == str(defaults[key]), name
        assert alert["for"] == "10m", name
        assert alert["labels"]["severity"] == severity, name
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], name
        assert f"above {defaults[key]} s" in alert["annotations"]["description"] or f"than {defaults[key]} %" in alert["annotations"]["description"], name
        assert alert["annotations"]["runbook_url"] == f"OPERATIONS.md#{anchor}", name
        expr = alert["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        assert "[5m]" in expr and SEL in expr, name


def test_http_errors_alert_is_the_5xx_ratio_without_probes():
    expr = alerts_of(ALL_ROLES)["ContosoHttpErrors"]["expr"]
    match = re.fullmatch(
        r"100 \* sum by \(namespace\) \(rate\(contoso_http_requests_total\{(?P<num>[^}]*)\}\[5m\]\)\) / "
        r"sum by \(namespace\) \(rate\(contoso_http_requests_total\{(?P<den>[^}]*)\}\[5m\]\)\) > 5",
        expr,
    )
    assert match, expr
    assert match["num"] == f'{SEL}, {NOT_USER_TRAFFIC}, status=~"5.."'
    assert match["den"] == f"{SEL}, {NOT_USER_TRAFFIC}", "the denominator counts every status of the same routes"


def test_latency_alerts_take_the_p99_of_their_histogram():
    alerts = alerts_of(ALL_ROLES)
    for name, metric, matchers in [
        ("ContosoHttpLatency", "contoso_http_request_duration_seconds", f"{SEL}, {NOT_USER_TRAFFIC}"),
        ("ContosoNotificationLatency", "contoso_notification_latency_seconds", SEL),
    ]:
        expr = alerts[name]["expr"]
        match = QUANTILE.match(expr)
        assert match and match.end() == len(expr) - len(" > " + threshold_of(expr)), expr
        assert (match["q"], match["by"], match["metric"], match["matchers"], match["window"]) == ("0.99", "namespace, le", metric, matchers, "5m")


def test_overridden_thresholds_and_runbook_url_change_the_alerts():
    values = with_rule(
        ALL_ROLES,
        httpErrorsPercent=2.5,
        httpLatencyP99Seconds=0.5,
        notificationLatencyP99Seconds=2,
        runbookUrl="https://git.example.com/shop/contoso/-/blob/main/OPERATIONS.md/",
    )
    alerts = alerts_of(values)
    assert threshold_of(alerts["ContosoHttpErrors"]["expr"]) == "2.5"
    assert threshold_of(alerts["ContosoHttpLatency"]["expr"]) == "0.5"
    assert threshold_of(alerts["ContosoNotificationLatency"]["expr"]) == "2"
    assert "More than 2.5 %" in alerts["ContosoHttpErrors"]["annotations"]["description"]
    assert "above 0.5 s" in alerts["ContosoHttpLatency"]["annotations"]["description"]
    assert "above 2 s" in alerts["ContosoNotificationLatency"]["annotations"]["description"]
    for name, (_, _, anchor) in NEW_ALERTS.items():
        assert alerts[name]["annotations"]["runbook_url"] == f"https://git.example.com/shop/contoso/-/blob/main/OPERATIONS.md#{anchor}"
    # The thresholds of the other alerts stay as they were.
    assert threshold_of(alerts["ContosoOutboxBacklog"]["expr"]) == str(rule_defaults()["outboxBacklogThreshold"])


def test_custom_selector_reaches_the_new_alerts():
    alerts = alerts_of(with_rule(ALL_ROLES, selector='job=~"contoso-.*"'))
    for name in NEW_ALERTS:
        assert 'job=~"contoso-.*"' in alerts[name]["expr"] and SEL not in alerts[name]["expr"], name


@pytest.mark.parametrize(
    "role, expected",
    [
        ("accept", {"ContosoHttpErrors", "ContosoHttpLatency"}),
        ("process", set()),
        ("notify", {"ContosoHttpErrors", "ContosoHttpLatency", "ContosoNotificationLatency"}),
    ],
)
def test_new_alerts_follow_the_roles_of_the_release(role, expected):
    """HTTP alerts where there is HTTP traffic (accept, notify; process serves probes and scrapes only), the
    notification latency where it is recorded (notify)."""
    assert set(alerts_of(only(role), release=f"contoso-{role}")) & set(NEW_ALERTS) == expected


def test_http_alerts_leave_out_the_admin_routes_and_keep_the_api_and_hub():
    """The routes the binary labels requests with: the probe and scrape routes match the exclusion, the order API and
    the hub routes do not (a hub upgrade is recorded at its 101, so its latency is not the socket's lifetime)."""
    excluded = re.compile(r"/health/.*|/metrics")  # PromQL regexes are anchored: fullmatch
    wiring = [SRC / "health.rs", SRC / "app.rs", *sorted((SRC / "app").glob("*.rs"))]  # the listeners: app/servers.rs
    admin = re.findall(r'\.route\("(/[^"]*)"', "".join(f.read_text() for f in wiring))
    assert {"/health/live", "/health/ready", "/metrics"} <= set(admin), admin
    assert all(excluded.fullmatch(r) for r in admin), admin
    hub = re.search(r'pub const HUB_PATH: &str = "([^"]+)"', (SRC / "roles" / "notify" / "mod.rs").read_text())
    assert hub, "HUB_PATH not found in src/roles/notify/mod.rs"
    api = ["/api" + r for r in re.findall(r'(?:route|resource)\("(/[^"]*)"', (SRC / "roles" / "accept" / "mod.rs").read_text())]
    assert "/api/orders" in api, api
    for route in [hub[1], hub[1] + "/negotiate", "unmatched", *api]:
        assert not excluded.fullmatch(route), route


def test_every_alert_has_a_runbook_url_to_an_anchor_of_operations_md():
    anchors = github_anchors(OPERATIONS.read_text())
    assert {"6-metrics-and-alerts", "61-alert-runbook"} <= anchors
    alerts = alerts_of(ALL_ROLES)
    assert len(alerts) >= 9
    for name, alert in alerts.items():
        url = alert["annotations"].get("runbook_url", "")
        base, _, anchor = url.partition("#")
        assert base == "OPERATIONS.md" and anchor in anchors, f"{name}: {url!r}"


def test_operations_md_lists_every_alert_with_the_default_thresholds():
    text = OPERATIONS.read_text()
    rows = {m[1]: m[0] for m in re.finditer(r"^\| `(Contoso\w+)` \(\w+\) \|.*$", text, re.M)}
    alerts = alerts_of(ALL_ROLES)
    assert set(rows) == set(alerts), "the alerts table of OPERATIONS.md and the PrometheusRule differ"
    for name, alert in alerts.items():
        assert f"`{name}` ({alert['labels']['severity']})" in rows[name], name
    defaults = rule_defaults()
    assert f"more than {defaults['httpErrorsPercent']} % (`httpErrorsPercent`)" in rows["ContosoHttpErrors"]
    assert f"above {defaults['httpLatencyP99Seconds']} s (`httpLatencyP99Seconds`)" in rows["ContosoHttpLatency"]
    assert f"above {defaults['notificationLatencyP99Seconds']} s (`notificationLatencyP99Seconds`)" in rows["ContosoNotificationLatency"]
    for name in NEW_ALERTS:
        assert re.search(rf"^#### `{name}`$", text, re.M), f"no runbook entry for {name}"
    assert "`contoso_notification_latency_seconds`" in text


# --- schema -------------------------------------------------------------------------------------------------------



@pytest.mark.parametrize(
    "rule",
    [
        {"httpErrorsPercent": "5"},
        {"httpErrorsPercent": "5%"},
        {"httpErrorsPercent": 0},
        {"httpErrorsPercent": 101},
        {"httpLatencyP99Seconds": "1"},
        {"httpLatencyP99Seconds": "1s"},
        {"httpLatencyP99Seconds": 0},
        {"httpLatencyP99Seconds": 10},
        {"notificationLatencyP99Seconds": "5"},
        {"notificationLatencyP99Seconds": -1},
        {"notificationLatencyP99Seconds": 30},
        {"runbookUrl": ""},
        {"runbookUrl": 1},
        {"notificationLatencyP99": 5},
    ],
)
def test_threshold_mistakes_fail_schema_validation(rule):
    refused_by_schema({"metrics": {"prometheusRule": {"enabled": True, **rule}}})


@pytest.mark.parametrize(
    "key",
    ["httpErrorsPercent", "httpLatencyP99Seconds", "notificationLatencyP99Seconds", "runbookUrl", "outboxBacklogThreshold", "deadLetteredThreshold", "handshakeFailuresPerSecond"],
)
def test_a_threshold_set_to_null_fails_the_render(key):
    """null removes the key when Helm merges values, so the schema never sees it: the template refuses to render
    `> <nil>` instead."""
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmRenderError, match=rf"metrics\.prometheusRule\.{key} is required"):
            chart.render(with_rule(ALL_ROLES, **{key: None}), name="contoso", namespace=NAMESPACE)


def test_fractional_and_integer_thresholds_pass_the_schema():
    values = {"metrics": {"prometheusRule": {"enabled": True, "httpErrorsPercent": 0.5, "httpLatencyP99Seconds": 2.5, "notificationLatencyP99Seconds": 9.5}}}
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
    assert threshold_of(alerts_of(values)["ContosoNotificationLatency"]["expr"]) == "9.5"


def test_latency_thresholds_stay_below_the_largest_histogram_bucket():
    """histogram_quantile never answers more than the largest finite bucket bound, so a threshold at or above it would
    never fire: the schema's bound is that bucket of src/telemetry/mod.rs."""
    text = (SRC / "telemetry" / "mod.rs").read_text()
    match = re.search(r"let buckets = \[([^\]]+)\];", text)
    assert match and 'Matcher::Suffix("_seconds".into()), &buckets' in text, "the _seconds buckets are not where the test reads them"
    largest = max(float(b) for b in match[1].split(","))
    schema = json.loads((CHART / "values.schema.json").read_text())
    props = schema["properties"]["metrics"]["properties"]["prometheusRule"]["properties"]
    for key in ("httpLatencyP99Seconds", "notificationLatencyP99Seconds"):
        assert props[key]["exclusiveMaximum"] == largest, key
        assert rule_defaults()[key] < largest, key


# --- dashboard ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", sorted(LATENCY_HISTOGRAMS))
def test_dashboard_shows_p50_and_p99_of_every_latency_histogram(dashboard, metric):
    found = [(panel, target, m) for panel, target, m in quantiles(dashboard) if m["metric"] == metric]
    by_quantile = {m["q"]: (panel, target, m) for panel, target, m in found}
    assert {"0.5", "0.99"} <= set(by_quantile), f"{metric}: quantiles {sorted(by_quantile)}"
    for panel, target, m in found:
        by = [label.strip() for label in m["by"].split(",")]
        assert by in (["le"], ["le", LATENCY_HISTOGRAMS[metric]], ["le", "pod"]), target["expr"]
        assert m["window"] == "5m", f"{panel['title']}: the window of the alerts, not {m['window']}"
        assert m["matchers"].startswith('namespace=~"$namespace"'), target["expr"]
        assert panel["fieldConfig"]["defaults"]["unit"] == "s", panel["title"]
        # Each line says its quantile, in its legend or in the panel's title.
        name = f"p{round(float(m['q']) * 100)}"
        assert target["legendFormat"].startswith(name) or name in panel["title"], (panel["title"], target["legendFormat"])


def test_http_latency_panels_leave_out_probes_like_the_alert(dashboard):
    for panel, target, m in quantiles(dashboard):
        if m["metric"] == "contoso_http_request_duration_seconds":
            assert NOT_USER_TRAFFIC in m["matchers"], target["expr"]
    titles = {m["q"]: p["title"] for p, _, m in quantiles(dashboard) if m["metric"] == "contoso_http_request_duration_seconds" and m["by"] == "le, route"}
    assert titles == {"0.99": "HTTP latency p99 by route"}


def test_notification_latency_has_a_stat_panel_and_leads_the_dashboard(dashboard):
    panels = dashboard["panels"]
    notification = [p for p in panels if any(m["metric"] == "contoso_notification_latency_seconds" for _, _, m in quantiles({"panels": [p]}))]
    stats = [p for p in notification if p["type"] == "stat"]
    assert len(stats) == 1, [p["title"] for p in notification]
    (stat,) = stats
    assert {QUANTILE.fullmatch(t["expr"])["q"] for t in stat["targets"]} == {"0.99", "0.5"}
    assert stat["gridPos"]["y"] == 0, "the SLO panel is on the top row"
    series = [p for p in notification if p["type"] == "timeseries" and p["gridPos"]["y"] == 0]
    assert series, "a notification latency graph on the top row"
    assert {"0.5", "0.99"} <= {QUANTILE.fullmatch(t["expr"])["q"] for t in series[0]["targets"]}
    # The stat turns red at the alert's default threshold (the dashboard is static JSON: it cannot read values).
    steps = stat["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1] == {"color": "red", "value": rule_defaults()["notificationLatencyP99Seconds"]}


def test_dashboard_5xx_ratio_panel_matches_the_alert(dashboard):
    (panel,) = [p for p in dashboard["panels"] if p["title"] == "HTTP 5xx ratio"]
    expr = panel["targets"][0]["expr"]
    assert 'status=~"5.."' in expr and NOT_USER_TRAFFIC in expr and "[5m]" in expr
    assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit"


def test_dashboard_panels_do_not_overlap(dashboard):
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]
