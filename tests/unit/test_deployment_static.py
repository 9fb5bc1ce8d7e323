"""Static checks of the compose reference deployment, its images and its CI.

No Docker engine is needed: the compose file, the Dockerfiles, the Prometheus and Grafana
provisioning, the make targets and the workflow are parsed and checked against each
other and against the code. The variables the wotr services must receive are derived
from the code (the declaration `VARIABLES` in `wotr_apps/settings.py`, the one place that
reads the environment), and the services' environment is fed to `Settings.from_env`, so
a renamed variable or a default that points at loopback fails here. Each checker is also run on a small broken example, so a check
that could never fail would show.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from wotr_apps import cli
from wotr_apps.settings import VARIABLES, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deployment" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
MAKE_INCLUDE = COMPOSE_DIR / "Makefile.include"
WOTR_DOCKERFILE = ROOT / "deployment" / "docker" / "Dockerfile"
SUPERSET_DIR = COMPOSE_DIR / "superset"
PROMETHEUS_CONFIG = ROOT / "deployment" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deployment" / "grafana"
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
DOCS = ROOT / "docs" / "deployment.md"

WOTR_SERVICES = ("api", "consumer", "relay", "etl")
LONG_RUNNING_WOTR = ("api", "consumer", "relay")
SEED_PREFIXES = ("WOTR_", "MINIO_", "KAFKA_", "POSTGRES_", "CLICKHOUSE_")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

# Connection variables whose code default is right inside compose, so the wotr services
# need not set them. Every other connection variable the settings declare must be set.
DEFAULT_IS_RIGHT = {
    "MINIO_SECURE": "plain HTTP inside the compose network",
    "MINIO_REGION": "MinIO accepts the default region",
    "KAFKA_PARTITIONS": "the default partition count suits one broker",
    "KAFKA_GROUP": "one consumer group, the default name",
    "KAFKA_REPLICATION_FACTOR": "one Redpanda broker: one replica per partition",
    "KAFKA_MIN_INSYNC_REPLICAS": "one broker: one in-sync replica",
    "CLICKHOUSE_CLUSTER": "one ClickHouse server, no cluster",
    "POSTGRES_SCHEMA": "the default schema of the compose database",
    "CLICKHOUSE_DSN": "must stay unset: a DSN would win over CLICKHOUSE_HOST/PORT",
}
MUST_STAY_UNSET = {"CLICKHOUSE_DSN"}


# ---------------------------------------------------------------------------------------
# Variables the code reads
# ---------------------------------------------------------------------------------------

_ENV_READS = [
    re.compile(r'\benv(?:iron)?\.get\(\s*"([A-Z][A-Z0-9_]*)"'),  # env.get("X"), os.environ.get("X")
    re.compile(r'\(\s*env\s*,\s*"([A-Z][A-Z0-9_]*)"'),  # _text(env, "X", ...), _int(env, "X", ...)
    re.compile(r'\benviron\[\s*"([A-Z][A-Z0-9_]*)"\s*\]'),  # os.environ["X"]
    re.compile(r'\bgetenv\(\s*"([A-Z][A-Z0-9_]*)"'),  # os.getenv("X")
]


def env_names_read(source: str) -> set[str]:
    """Environment variable names a Python source reads, by the call forms the code uses."""
    return {m.group(1) for pattern in _ENV_READS for m in pattern.finditer(source)}


def _read_sources(paths: Iterable[Path]) -> set[str]:
    return set().union(*(env_names_read(p.read_text(encoding="utf-8")) for p in paths))


SETTINGS_VARS = {v.name for v in VARIABLES}  # every variable wotr reads, declared once
CONNECTION_VARS = {v.name for v in VARIABLES if v.section}  # those of the servers (s3, kafka, ...)
# The declaration, plus anything runtime code still reads by hand (the scan should find nothing new).
ALL_CODE_VARS = SETTINGS_VARS | _read_sources(
    [*(ROOT / "src" / "wotr_apps").rglob("*.py"), *(ROOT / "src" / "wotr_adapters").rglob("*.py")]
)
REQUIRED_VARS = (CONNECTION_VARS - set(DEFAULT_IS_RIGHT)) | {"WOTR_PROFILE"}


def test_env_scanner_finds_every_call_form():
    source = '''
        a = env.get("A_ONE")
        b = _text(env, "B_TWO", "x")
        c = os.environ.get("C_THREE", "")
        d = os.environ["D_FOUR"]
        e = os.getenv("E_FIVE")
        f = other.get("NOT_ENV")
    '''
    assert env_names_read(source) == {"A_ONE", "B_TWO", "C_THREE", "D_FOUR", "E_FIVE"}


def test_code_reads_the_seed_variables():
    """The scan is not vacuous: it sees the seed's names where the code reads them."""
    assert {"WOTR_PROFILE", "WOTR_HOST", "WOTR_PORT", "WOTR_METRICS_PORT"} <= SETTINGS_VARS
    assert {"MINIO_ENDPOINT", "MINIO_BUCKET", "KAFKA_BOOTSTRAP", "KAFKA_TOPIC", "POSTGRES_HOST",
            "POSTGRES_PASSWORD", "CLICKHOUSE_HOST", "CLICKHOUSE_DB"} <= CONNECTION_VARS


def test_allowlisted_defaults_are_variables_the_code_reads():
    assert set(DEFAULT_IS_RIGHT) - CONNECTION_VARS == set(), "stale entries in DEFAULT_IS_RIGHT"


# ---------------------------------------------------------------------------------------
# Compose: loading and variable interpolation
# ---------------------------------------------------------------------------------------

_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(Exception):
    pass


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error} and ${VAR?error}."""

    def replace(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["bare"]
        op, arg = m["op"], m["arg"] or ""
        present = name in variables
        value = variables.get(name, "")
        if op in (":-", ":?"):
            present = present and value != ""
        if present:
            return value
        if op in (":?", "?"):
            raise MissingVariable(f"{name}: {arg}")
        if op in (":-", "-"):
            return arg
        return ""

    return _INTERPOLATION.sub(replace, value)


def interpolated(node: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [interpolated(v, variables) for v in node]
    if isinstance(node, dict):
        return {k: interpolated(v, variables) for k, v in node.items()}
    return node


def referenced_variables(text: str) -> set[str]:
    return {m["braced"] or m["bare"] for m in _INTERPOLATION.finditer(text) if not m["escaped"]}


def parse_env_file(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        values[key.strip()] = value.strip()
    return values


def test_interpolation_follows_compose_rules():
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("a-$SET-${SET}-$$SET", env) == "a-x-x-$SET"
    assert interpolate("${MISSING:-d} ${EMPTY:-d} ${EMPTY-d} ${MISSING-d}", env) == "d d  d"
    with pytest.raises(MissingVariable, match="MISSING: say so"):
        interpolate("${MISSING:?say so}", env)
    with pytest.raises(MissingVariable):
        interpolate("${EMPTY:?empty is missing}", env)
    assert interpolate("${EMPTY?only unset fails}", env) == ""


RAW_COMPOSE_TEXT = COMPOSE_FILE.read_text(encoding="utf-8")
RAW_COMPOSE = yaml.safe_load(RAW_COMPOSE_TEXT)
ENV_VALUES = parse_env_file(ENV_EXAMPLE.read_text(encoding="utf-8"))
COMPOSE = interpolated(RAW_COMPOSE, ENV_VALUES)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def test_compose_file_parses_and_has_the_reference_services():
    expected = {"redpanda", "minio", "postgres", "clickhouse", "prometheus", "grafana", "superset",
                "api", "consumer", "relay", "etl"}
    assert expected <= set(SERVICES)
    for name, service in SERVICES.items():
        assert isinstance(service, dict), name


def test_env_example_defines_exactly_the_variables_compose_uses():
    used = referenced_variables(RAW_COMPOSE_TEXT.replace("$$", ""))
    assert used - set(ENV_VALUES) == set(), "used in docker-compose.yml, missing from .env.example"
    assert set(ENV_VALUES) - used == set(), "in .env.example, never used by docker-compose.yml"
    assert all(ENV_VALUES.values()), "every example variable has a value"


def test_compose_needs_its_secrets_from_the_env_file():
    """Without an env file the credentials are missing and compose refuses to start."""
    for secret in ("MINIO_SECRET_KEY", "POSTGRES_PASSWORD", "CLICKHOUSE_PASSWORD", "SUPERSET_SECRET_KEY"):
        without = {k: v for k, v in ENV_VALUES.items() if k != secret}
        with pytest.raises(MissingVariable, match=secret):
            interpolated(RAW_COMPOSE, without)


# ---------------------------------------------------------------------------------------
# Images: pinned, or built here
# ---------------------------------------------------------------------------------------

_FLOATING_TAGS = {"latest", "stable", "edge", "main", "master", "nightly", "dev", "lts", "current"}
_VERSION_TAG = re.compile(r"^v?\d+(?:\.\d+)+(?:[-._][A-Za-z0-9.]+)*$")  # 16.4, v3.5.0, 3.11.14-slim-bookworm
_RELEASE_TAG = re.compile(r"^RELEASE\.\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z$")  # MinIO's release names


def image_pin_problem(ref: str) -> str | None:
    """None when `ref` names one exact version (a version tag or a digest), else why not."""
    if "$" in ref:
        return f"{ref}: unresolved variable"
    if re.search(r"@sha256:[0-9a-f]{64}$", ref):
        return None
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"{ref}: no tag"
    tag = last.rsplit(":", 1)[1]
    if tag.lower() in _FLOATING_TAGS:
        return f"{ref}: floating tag {tag!r}"
    if not (_VERSION_TAG.match(tag) or _RELEASE_TAG.match(tag)):
        return f"{ref}: tag {tag!r} is not an exact version (major.minor at least)"
    return None


@pytest.mark.parametrize("ref", [
    "postgres", "postgres:latest", "grafana/grafana:11", "localhost:5000/wotr", "redpanda:stable",
    "quay.io/minio/minio:latest", "python:3-slim", "${IMAGE}",
])
def test_image_pin_checker_rejects(ref):
    assert image_pin_problem(ref) is not None


@pytest.mark.parametrize("ref", [
    "postgres:16.4-bookworm", "prom/prometheus:v3.5.0", "clickhouse/clickhouse-server:24.8.4.13",
    "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z", "python:3.11.14-slim-bookworm",
    "localhost:5000/wotr:1.2.3", "busybox@sha256:" + "a" * 64,
])
def test_image_pin_checker_accepts(ref):
    assert image_pin_problem(ref) is None


def test_every_service_has_a_pinned_image_or_a_build():
    problems = []
    for name, service in SERVICES.items():
        if "build" in service:
            continue
        if "image" not in service:
            problems.append(f"{name}: neither image nor build")
        elif problem := image_pin_problem(service["image"]):
            problems.append(f"{name}: {problem}")
    assert problems == []


def build_of(service: Mapping[str, Any]) -> tuple[Path, Path, str | None]:
    build = service["build"]
    if isinstance(build, str):
        build = {"context": build}
    context = (COMPOSE_DIR / build["context"]).resolve()
    return context, (context / build.get("dockerfile", "Dockerfile")).resolve(), build.get("target")


def test_builds_name_existing_contexts_dockerfiles_and_stages():
    for name, service in SERVICES.items():
        if "build" not in service:
            continue
        context, dockerfile, target = build_of(service)
        assert context.is_dir(), f"{name}: no build context {context}"
        assert dockerfile.is_file(), f"{name}: no Dockerfile {dockerfile}"
        if target is not None:
            assert target in {s.name for s in parse_dockerfile(dockerfile.read_text())}, f"{name}: no stage {target}"


def test_api_consumer_and_relay_share_one_image():
    builds = {name: (SERVICES[name]["image"], build_of(SERVICES[name])) for name in LONG_RUNNING_WOTR}
    assert len(set(builds.values())) == 1, builds
    context, dockerfile, target = build_of(SERVICES["api"])
    assert (context, dockerfile, target) == (ROOT, WOTR_DOCKERFILE, "runtime")
    assert build_of(SERVICES["etl"]) == (ROOT, WOTR_DOCKERFILE, "etl")


# ---------------------------------------------------------------------------------------
# Ports, health checks, dependencies, volumes
# ---------------------------------------------------------------------------------------


def port_binding_problem(port: Any) -> str | None:
    """None when a published port binds 127.0.0.1 on the host."""
    if isinstance(port, dict):
        if port.get("published") is None:
            return None  # not published
        return None if port.get("host_ip") == "127.0.0.1" else f"{port}: host_ip is not 127.0.0.1"
    text = str(port)
    parts = text.split(":")
    if len(parts) == 3 and parts[0] == "127.0.0.1":
        return None
    return f"{text!r}: not bound to 127.0.0.1"


@pytest.mark.parametrize("port", ["8000:8000", "0.0.0.0:8000:8000", 8000, "8000",
                                  {"target": 8000, "published": 8000}, {"target": 1, "published": 1, "host_ip": "0.0.0.0"}])
def test_port_checker_rejects(port):
    assert port_binding_problem(port) is not None


def test_every_published_port_binds_loopback():
    problems = [f"{name}: {p}" for name, s in SERVICES.items() for port in s.get("ports", [])
                if (p := port_binding_problem(port))]
    assert problems == []
    assert any(s.get("ports") for s in SERVICES.values())


def published(service: str) -> dict[int, int]:
    """Container port -> host port of one service."""
    out = {}
    for port in SERVICES[service].get("ports", []):
        _ip, host, container = str(port).split(":")
        out[int(container)] = int(host)
    return out


def test_api_is_published_on_8000_by_default():
    assert published("api") == {8000: 8000}


def health_problems(services: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every long-running service (restart policy other than "no") needs a health check."""
    problems = []
    for name, service in services.items():
        restart = str(service.get("restart", "no"))
        if restart == "no":
            continue
        check = service.get("healthcheck") or {}
        if check.get("disable") or not check.get("test") or check["test"] == ["NONE"]:
            problems.append(f"{name}: long-running without a health check")
    return problems


def test_health_checker_rejects_a_long_running_service_without_one():
    assert health_problems({"a": {"restart": "unless-stopped"}}) == ["a: long-running without a health check"]
    assert health_problems({"a": {"restart": "always", "healthcheck": {"disable": True}}})
    assert health_problems({"job": {"restart": "no"}}) == []


def test_every_long_running_service_has_a_health_check():
    assert health_problems(SERVICES) == []
    one_shot = [name for name, s in SERVICES.items() if str(s.get("restart", "no")) == "no"]
    assert one_shot == ["etl"], "only the on-demand ETL is a one-shot job"
    assert SERVICES["etl"].get("profiles") == ["etl"]


def dependency_problems(services: Mapping[str, Mapping[str, Any]]) -> list[str]:
    problems = []
    for name, service in services.items():
        deps = service.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            if dep not in services:
                problems.append(f"{name} -> {dep}: no such service")
                continue
            condition = (spec or {}).get("condition", "service_started")
            if condition == "service_healthy" and not (services[dep].get("healthcheck") or {}).get("test"):
                problems.append(f"{name} -> {dep}: waits for health, but {dep} has no health check")
            elif condition not in ("service_healthy", "service_completed_successfully"):
                problems.append(f"{name} -> {dep}: condition {condition} does not wait for readiness")
    return problems


def test_dependency_checker_rejects_unknown_unhealthy_and_unconditional():
    services = {"a": {"depends_on": {"b": {"condition": "service_healthy"}, "ghost": {"condition": "service_healthy"}}},
                "b": {}, "c": {"depends_on": ["b"]}}
    assert dependency_problems(services) == [
        "a -> b: waits for health, but b has no health check",
        "a -> ghost: no such service",
        "c -> b: condition service_started does not wait for readiness",
    ]


def test_depends_on_names_existing_healthy_services():
    assert dependency_problems(SERVICES) == []
    api_deps = set(SERVICES["api"]["depends_on"])
    assert {"minio", "postgres", "redpanda", "clickhouse"} <= api_deps


def test_volumes_are_named_and_bind_mounts_exist():
    declared = set(COMPOSE.get("volumes") or {})
    used = set()
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE_DIR / source).resolve().exists(), f"{name}: bind source {source} missing"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
                used.add(source)
    assert declared == used, "declared volumes that no service uses"
    for data_service in ("redpanda", "minio", "postgres", "clickhouse", "prometheus", "grafana"):
        sources = [str(v).split(":")[0] for v in SERVICES[data_service].get("volumes", [])]
        assert any(s in declared for s in sources), f"{data_service} keeps its data in no named volume"


def mounts(service: str) -> dict[str, Path]:
    """Container path -> host path of one service's bind mounts."""
    out = {}
    for volume in SERVICES[service].get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = (COMPOSE_DIR / source).resolve()
    return out


# ---------------------------------------------------------------------------------------
# The wotr services' configuration, checked through the code that reads it
# ---------------------------------------------------------------------------------------


def service_hosts(value: str) -> list[str]:
    return [part.strip().rsplit(":", 1)[0] for part in value.split(",") if part.strip()]


@pytest.mark.parametrize("name", WOTR_SERVICES)
def test_wotr_service_sets_every_variable_the_code_needs(name):
    env = environment(SERVICES[name])
    assert REQUIRED_VARS - set(env) == set(), f"{name} misses variables the code reads"
    assert MUST_STAY_UNSET & set(env) == set()


@pytest.mark.parametrize("name", WOTR_SERVICES)
def test_wotr_service_sets_no_variable_the_code_ignores(name):
    """A misspelt name (KAFKA_BOOTSTRAP_SERVERS) would silently fall back to a default."""
    known = ALL_CODE_VARS
    env = environment(SERVICES[name])
    unknown = {k for k in env if k.startswith(SEED_PREFIXES)} - known
    assert unknown == set()


@pytest.mark.parametrize("name", WOTR_SERVICES)
def test_wotr_service_settings_point_at_compose_services(name):
    env = environment(SERVICES[name])
    settings = Settings.from_env(env)
    assert settings.profile == "local"
    assert settings.bucket == "raw-data"
    assert settings.topic == "ingest-events"
    assert settings.clickhouse.database == "wotr"
    assert settings.clickhouse.dsn is None
    assert settings.s3.endpoint == "minio:9000"
    assert service_hosts(settings.kafka.bootstrap) == ["redpanda"]
    assert settings.kafka.bootstrap == "redpanda:9092"
    assert (settings.postgres.host, settings.postgres.port) == ("postgres", 5432)
    assert (settings.clickhouse.host, settings.clickhouse.port) == ("clickhouse", 8123)
    for host in [settings.s3.endpoint.rsplit(":", 1)[0], *service_hosts(settings.kafka.bootstrap),
                 settings.postgres.host, settings.clickhouse.host]:
        assert host in SERVICES and host not in LOOPBACK
    # The credentials are the ones the servers were started with.
    minio, postgres, clickhouse = (environment(SERVICES[s]) for s in ("minio", "postgres", "clickhouse"))
    assert (settings.s3.access_key, settings.s3.secret_key) == (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"])
    assert (settings.postgres.user, settings.postgres.password, settings.postgres.dbname) == (
        postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"])
    assert (settings.clickhouse.user, settings.clickhouse.password) == (
        clickhouse["CLICKHOUSE_USER"], clickhouse["CLICKHOUSE_PASSWORD"])


def test_only_the_api_listens_beyond_loopback():
    api = Settings.from_env(environment(SERVICES["api"]))
    assert api.host == "0.0.0.0"
    assert api.port in published("api")
    check = " ".join(SERVICES["api"]["healthcheck"]["test"])
    assert f"127.0.0.1:{api.port}/ready" in check
    for name in ("consumer", "relay", "etl"):
        assert "WOTR_HOST" not in environment(SERVICES[name]), name


def wotr_command(name: str) -> list[str]:
    return [str(part) for part in SERVICES[name]["command"]]


@pytest.mark.parametrize("name", LONG_RUNNING_WOTR)
def test_wotr_commands_are_valid_cli_invocations(name):
    args = cli._parser().parse_args(wotr_command(name))
    expected = {"api": "serve", "consumer": "consume", "relay": "relay"}[name]
    assert args.command == expected
    if name == "api":
        assert args.workers is False, "the api serves alone; consumer and relay run as services"
    else:
        ready_file = str(args.ready_file)
        assert SERVICES[name]["healthcheck"]["test"] == ["CMD", "test", "-f", ready_file]


def test_etl_command_is_a_valid_cli_invocation():
    assert cli._parser().parse_args(wotr_command("etl")).command == "etl"


def test_metrics_ports_are_the_ones_prometheus_scrapes():
    targets = prometheus_targets(yaml.safe_load(PROMETHEUS_CONFIG.read_text()))
    for name, job in (("consumer", "wotr-consumer"), ("relay", "wotr-relay")):
        settings = Settings.from_env(environment(SERVICES[name]))
        port = settings.metrics_port or cli.METRICS_PORTS[wotr_command(name)[0]]
        assert targets[job] == [f"{name}:{port}"]
    api = Settings.from_env(environment(SERVICES["api"]))
    assert targets["wotr-api"] == [f"api:{api.port}"]


@pytest.mark.parametrize("name", ["consumer", "relay"])
def test_worker_metrics_are_reachable_from_prometheus(name):
    settings = Settings.from_env(environment(SERVICES[name]))
    assert settings.metrics_host not in LOOPBACK


# ---------------------------------------------------------------------------------------
# Prometheus and Grafana
# ---------------------------------------------------------------------------------------


def prometheus_targets(config: Mapping[str, Any]) -> dict[str, list[str]]:
    return {job["job_name"]: [t for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
            for job in config.get("scrape_configs", [])}


def target_problems(config: Mapping[str, Any], services: Iterable[str]) -> list[str]:
    services = set(services)
    problems = []
    for job, targets in prometheus_targets(config).items():
        for target in targets:
            host, _, port = target.rpartition(":")
            if host not in services:
                problems.append(f"{job}: {target} is not a compose service")
            elif not port.isdigit():
                problems.append(f"{job}: {target} has no port")
    return problems


def test_target_checker_rejects_loopback_and_unknown_hosts():
    config = {"scrape_configs": [{"job_name": "x", "static_configs": [{"targets": ["localhost:9464", "ghost:1", "api"]}]}]}
    assert len(target_problems(config, ["api"])) == 3


def test_prometheus_scrapes_compose_services_and_loads_the_mounted_rules():
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["global"]["scrape_interval"] == "5s"
    assert target_problems(config, SERVICES) == []
    assert {"wotr-api", "wotr-consumer", "wotr-relay"} <= set(prometheus_targets(config))
    mounted = mounts("prometheus")
    flags = dict(arg.split("=", 1) for arg in SERVICES["prometheus"]["command"])
    assert mounted[flags["--config.file"]] == PROMETHEUS_CONFIG
    for pattern in config["rule_files"]:
        folder, _, glob = pattern.rpartition("/")
        assert folder in mounted, f"rule files {pattern} are not mounted"
        assert list(mounted[folder].glob(glob)), f"no rule file matches {pattern} in {mounted[folder]}"


def test_grafana_datasource_points_at_the_prometheus_service():
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = [d for d in datasources["datasources"] if d["type"] == "prometheus"]
    assert source["name"] == "Prometheus"
    url = urlsplit(source["url"])
    assert url.hostname in SERVICES and url.hostname == "prometheus"
    assert url.port in published("prometheus"), "the datasource port is not the one Prometheus listens on"
    used_uids = set()
    for path in (GRAFANA / "dashboards").glob("*.json"):
        for match in re.finditer(r'"datasource":\s*\{[^}]*\}', path.read_text()):
            ref = json.loads(match.group(0).split(":", 1)[1])
            if ref.get("type") == "prometheus":
                used_uids.add(ref.get("uid"))
    assert used_uids <= {source["uid"]}, "dashboards refer to a datasource uid that is not provisioned"


def test_grafana_mounts_the_provisioning_and_the_dashboards_it_names():
    mounted = mounts("grafana")
    assert mounted["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "wotr.yml").read_text())["providers"]
    for provider in providers:
        path = provider["options"]["path"]
        assert path in mounted, f"dashboard path {path} is not mounted"
        assert mounted[path] == GRAFANA / "dashboards"


# ---------------------------------------------------------------------------------------
# Dockerfiles
# ---------------------------------------------------------------------------------------


class Stage:
    def __init__(self, name: str, base: str, index: int) -> None:
        self.name, self.base, self.index = name, base, index
        self.instructions: list[tuple[str, str]] = []

    def __repr__(self) -> str:
        return f"Stage({self.name!r}, {self.base!r})"


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


def parse_dockerfile(text: str) -> list[Stage]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, args in dockerfile_instructions(text):
        if keyword == "ARG" and not stages:
            name, _, default = args.partition("=")
            global_args[name] = default
        elif keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--platform")]
            base = interpolate(words[0], global_args)
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else str(len(stages))
            stages.append(Stage(name, base, len(stages)))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


def lineage(stages: list[Stage], stage: Stage) -> list[Stage]:
    """The stage and the stages it is built FROM, root first."""
    by_name = {s.name: s for s in stages}
    chain = [stage]
    while chain[0].base in by_name:
        chain.insert(0, by_name[chain[0].base])
    return chain


def effective_user(stages: list[Stage], stage: Stage) -> str | None:
    users = [args for s in lineage(stages, stage) for kw, args in s.instructions if kw == "USER"]
    return users[-1] if users else None


def user_problem(stages: list[Stage], stage: Stage) -> str | None:
    user = effective_user(stages, stage)
    if user is None:
        return f"{stage.name}: no USER, runs as root"
    if user.split(":")[0] in ("root", "0"):
        return f"{stage.name}: USER {user} is root"
    return None


def test_user_checker_rejects_root_and_missing_user():
    no_user = parse_dockerfile("FROM python:3.11.14-slim AS a\nRUN true\n")
    assert user_problem(no_user, no_user[-1]) is not None
    root = parse_dockerfile("FROM python:3.11.14-slim AS a\nUSER 10001\nFROM a AS b\nUSER 0:0\n")
    assert user_problem(root, root[-1]) is not None
    inherited = parse_dockerfile("FROM python:3.11.14-slim AS a\nUSER app\nFROM a AS b\nRUN true\n")
    assert user_problem(inherited, inherited[-1]) is None


def dependency_layer_problem(stages: list[Stage], stage: Stage) -> str | None:
    """Dependencies must be installed from pyproject.toml before the source is copied,
    and the package itself installed after it."""
    steps = [(kw, args) for s in lineage(stages, stage) for kw, args in s.instructions]
    def first(predicate) -> int | None:
        return next((i for i, step in enumerate(steps) if predicate(*step)), None)
    pyproject = first(lambda kw, a: kw == "COPY" and "pyproject.toml" in a.split())
    source = first(lambda kw, a: kw == "COPY" and ("src" in a.split() or a.split()[0] == "."))
    deps = first(lambda kw, a: kw == "RUN" and "pip install" in a and " --no-deps" not in a)
    package = first(lambda kw, a: kw == "RUN" and re.search(r"pip install --no-deps \.(\s|$|&)", a))
    if pyproject is None or source is None or deps is None or package is None:
        return f"{stage.name}: missing one of COPY pyproject.toml, dependency install, COPY src, package install"
    if not pyproject < deps < source < package:
        return f"{stage.name}: the dependency layer does not come before the code"
    return None


def test_dependency_layer_checker_rejects_code_before_dependencies():
    bad = parse_dockerfile("FROM python:3.11.14-slim AS b\nCOPY . .\nCOPY pyproject.toml ./\n"
                           "RUN pip install '.[api]'\nRUN pip install --no-deps .\n")
    assert dependency_layer_problem(bad, bad[-1]) is not None
    good = parse_dockerfile("FROM python:3.11.14-slim AS d\nCOPY pyproject.toml ./\nRUN pip install '.[api]'\n"
                            "FROM d AS b\nCOPY src ./src\nRUN pip install --no-deps .\n")
    assert dependency_layer_problem(good, good[-1]) is None


WOTR_STAGES = parse_dockerfile(WOTR_DOCKERFILE.read_text())
STAGE = {s.name: s for s in WOTR_STAGES}


def copied_from(stage: Stage) -> list[Stage]:
    names = [m.group(1) for kw, args in stage.instructions if kw == "COPY"
             for m in [re.search(r"--from=(\S+)", args)] if m]
    return [STAGE[n] for n in names if n in STAGE]


def test_dockerfile_targets_and_default():
    assert {"runtime", "etl"} <= set(STAGE)
    assert WOTR_STAGES[-1].name == "runtime", "a plain `docker build` gives the serving image"


def test_dockerfile_pins_a_slim_python_311_base():
    external = {s.base for s in WOTR_STAGES if s.base not in STAGE}
    assert external, "no base image"
    for base in external:
        assert image_pin_problem(base) is None, image_pin_problem(base)
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base


@pytest.mark.parametrize("target", ["runtime", "etl"])
def test_dockerfile_final_stages_run_unprivileged(target):
    assert user_problem(WOTR_STAGES, STAGE[target]) is None


@pytest.mark.parametrize("target", ["runtime", "etl"])
def test_dockerfile_installs_dependencies_before_the_code(target):
    venv_copies = [m.group(1) for kw, args in STAGE[target].instructions if kw == "COPY"
                   for m in [re.fullmatch(r"--from=(\S+) /opt/wotr /opt/wotr", args)] if m]
    assert len(venv_copies) == 1, "the target takes its virtual environment from one build stage"
    builder = STAGE[venv_copies[0]]
    assert dependency_layer_problem(WOTR_STAGES, builder) is None
    entry = [a for kw, a in lineage(WOTR_STAGES, STAGE[target])[-1].instructions if kw == "ENTRYPOINT"]
    assert entry == ['["wotr"]'], "the image runs the installed `wotr` command"


def mentions_java(stages: Iterable[Stage]) -> bool:
    return any(re.search(r"openjdk|default-jre|\bjre\b|temurin", args)
               for s in stages for kw, args in s.instructions if kw == "RUN")


def test_java_only_in_the_etl_target():
    runtime_side = lineage(WOTR_STAGES, STAGE["runtime"]) + [
        s for c in copied_from(STAGE["runtime"]) for s in lineage(WOTR_STAGES, c)]
    assert not mentions_java(runtime_side)
    etl = lineage(WOTR_STAGES, STAGE["etl"])
    assert any("openjdk-17-jre-headless" in args for s in etl for kw, args in s.instructions if kw == "RUN")


def test_dockerfile_extras_exist_and_cover_the_local_profile():
    import tomllib

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    arg = [args for s in WOTR_STAGES for kw, args in s.instructions if kw == "ARG" and args.startswith("WOTR_EXTRAS=")]
    assert arg and len(set(arg)) == 1, "WOTR_EXTRAS is declared once, the same in every stage"
    serving = set(arg[0].split("=", 1)[1].split(","))
    assert serving <= extras
    assert {"api", "minio", "kafka", "postgres", "clickhouse", "telemetry"} <= serving
    assert "etl" in extras and any(",etl]" in a for s in WOTR_STAGES for kw, a in s.instructions if kw == "RUN")


def test_dockerignore_keeps_local_state_out_and_the_sources_in():
    patterns = [p.strip().rstrip("/") for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        return any(Path(path).match(p.removeprefix("**/")) or path == p or path.startswith(p + "/")
                   for p in patterns if not p.startswith("!"))

    for path in (".venv", ".wotr", ".git", "bench/results", ".pytest_cache", "src/wotr_apps/__pycache__",
                 "deployment/compose/.env"):
        assert ignored(path), f"{path} reaches the build context"
    for path in ("pyproject.toml", "README.md", "src", "src/wotr_apps/cli.py"):
        assert not ignored(path), f"{path} is needed by the Dockerfile"


def test_superset_image_is_pinned_unprivileged_and_registers_clickhouse():
    stages = parse_dockerfile((SUPERSET_DIR / "Dockerfile").read_text())
    assert image_pin_problem(stages[0].base) is None
    assert user_problem(stages, stages[-1]) is None
    runs = " ".join(a for kw, a in stages[-1].instructions if kw == "RUN")
    assert re.search(r"clickhouse-connect==\d+\.\d+\.\d+", runs)
    bootstrap = (SUPERSET_DIR / "bootstrap.sh").read_text()
    assert "clickhousedb://" in bootstrap and "superset set-database-uri" in bootstrap
    needed = set(re.findall(r'\$\{?([A-Z][A-Z0-9_]+)', bootstrap)) | set(re.findall(r'e\["([A-Z][A-Z0-9_]+)"\]', bootstrap))
    assert needed - set(environment(SERVICES["superset"])) == set(), "bootstrap.sh reads variables compose does not set"
    clickhouse = environment(SERVICES["clickhouse"])
    superset = environment(SERVICES["superset"])
    assert superset["CLICKHOUSE_HOST"] == "clickhouse"
    assert (superset["CLICKHOUSE_USER"], superset["CLICKHOUSE_PASSWORD"]) == (
        clickhouse["CLICKHOUSE_USER"], clickhouse["CLICKHOUSE_PASSWORD"])


# ---------------------------------------------------------------------------------------
# Make targets, CI, docs
# ---------------------------------------------------------------------------------------


def make_targets(text: str) -> set[str]:
    return {t for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9_.\-/ ]*?)\s*:(?!=)", text, re.M)
            for t in m.group(1).split()}


def test_make_include_has_the_compose_targets_and_no_clash():
    text = MAKE_INCLUDE.read_text()
    targets = make_targets(text)
    assert {"build", "up", "ingest", "compose-etl", "down", "ps", "logs"} <= targets
    assert "run-etl" not in targets
    top = make_targets((ROOT / "Makefile").read_text()) - {".PHONY"}
    assert targets & top == set(), "targets defined twice"
    compose = re.search(r"^COMPOSE :=\s*(.+)$", text, re.M).group(1)
    assert "docker compose -f $(COMPOSE_FILE_PATH) --env-file $(COMPOSE_ENV_FILE)" == compose.strip()
    assert "deployment/compose/docker-compose.yml" in text and "deployment/compose/.env.example" in text
    down = re.search(r"^down:\n\t(.+)$", text, re.M).group(1)
    assert "--volumes" in down.split() or "-v" in down.split()
    assert "--wait" in re.search(r"^up:\n\t(.+)$", text, re.M).group(1)


def test_ci_runs_make_test_and_a_compose_smoke_job():
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    runs = {name: " ".join(step.get("run", "") for step in job["steps"]) for name, job in jobs.items()}
    uses = {name: " ".join(step.get("uses", "") for step in job["steps"]) for name, job in jobs.items()}
    (test_job,) = [n for n, r in runs.items() if re.search(r"\bmake test\b", r)]
    assert "3.11" in jobs[test_job]["container"]["image"]
    assert "openjdk-17" in runs[test_job] and "actions/setup-go" in uses[test_job]
    (smoke,) = [n for n, r in runs.items() if "wotr.ingested_data" in r]
    assert re.search(r"\bup\b", runs[smoke]) and "curl" in runs[smoke] and "/ingest" in runs[smoke]
    assert "SELECT count() FROM wotr.ingested_data" in runs[smoke] and re.search(r"\bdown\b", runs[smoke])
    assert jobs[smoke]["runs-on"].startswith("ubuntu")


def code_lines(markdown: str) -> list[str]:
    """Lines of fenced code blocks and the contents of inline code spans."""
    blocks = re.findall(r"^\s*```[a-z]*\n(.*?)^\s*```", markdown, re.M | re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"^\s*```.*?^\s*```", "", markdown, flags=re.M | re.S))
    return [line.strip() for block in blocks for line in block.splitlines()] + [s.strip() for s in spans]


def test_code_lines_sees_blocks_and_spans():
    text = "Run `make up` now.\n\n```sh\nmake build up   # both\n```\nthen make sure.\n"
    assert code_lines(text) == ["make build up   # both", "make up"]


def test_docs_mention_only_existing_make_targets_and_default_ports():
    text = DOCS.read_text()
    known = make_targets(MAKE_INCLUDE.read_text()) | make_targets((ROOT / "Makefile").read_text())
    mentioned = set()
    for line in code_lines(text):
        words = line.split("#", 1)[0].split()
        if words[:1] == ["make"]:
            mentioned |= {w for w in words[1:] if "=" not in w and not w.startswith("-")}
    assert mentioned and mentioned <= known, mentioned - known
    for service, port in (("api", 8000), ("grafana", 3000), ("prometheus", 9090), ("superset", 8088)):
        host_port = published(service)[port]
        assert f"127.0.0.1:{host_port}" in text, f"docs do not give {service}'s address"


# ---------------------------------------------------------------------------------------
# Redpanda: durable settings (fsync on, developer mode off)
# ---------------------------------------------------------------------------------------

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT]?)i?B?$", re.IGNORECASE)


def size_bytes(text: str) -> int:
    number, unit = _SIZE.match(text).groups()
    return int(float(number) * 1024 ** " KMGT".index(unit.upper() or " "))


def redpanda_durability_problems(service: Mapping[str, Any]) -> list[str]:
    """rpk runs a node whose redpanda.yaml says developer_mode (the image's default, and
    rpk's when there is no file) as --mode=dev-container, which bypasses fsync; so the
    service must switch the node to production mode before rpk starts, and start it with
    fsync explicitly on and at least the 1 GiB per core Redpanda demands outside
    developer mode."""
    command = [str(part) for part in service.get("command") or []]
    flags = dict(part.split("=", 1) if "=" in part else (part, "") for part in command if part.startswith("--"))
    problems = []
    if command[:2] != ["redpanda", "start"]:
        problems.append(f"command {command[:2]} is not `redpanda start`")
    if "--mode" in flags or any("dev-container" in part for part in command) or "--dev-mode" in flags:
        problems.append("a developer mode (--mode dev-container) is set: fsync is bypassed")
    if flags.get("--unsafe-bypass-fsync", "missing").lower() not in ("false", "0"):
        problems.append("--unsafe-bypass-fsync=false is not set explicitly")
    if any("developer_mode=true" in part or "write_caching" in part for part in command):
        problems.append("developer_mode or write caching switched on")
    entrypoint = service.get("entrypoint")
    script = entrypoint[2] if isinstance(entrypoint, list) and entrypoint[:2] == ["/bin/sh", "-c"] else ""
    production = script.find("rpk redpanda mode production")
    start = script.find('exec /entrypoint.sh "$@"')
    if production < 0 or start < production or "&&" not in script[production:start]:
        problems.append("the entrypoint does not run `rpk redpanda mode production && exec /entrypoint.sh \"$@\"`")
    cores = int(flags.get("--smp", "0") or 0)
    if cores < 1 or "--memory" not in flags or size_bytes(flags["--memory"]) < cores * 1024 ** 3:
        problems.append("--smp and --memory must give each core at least 1 GiB")
    return problems


def test_redpanda_durability_checker_rejects_developer_settings():
    good = copy.deepcopy(SERVICES["redpanda"])
    dev = copy.deepcopy(good)
    dev["command"] = ["redpanda", "start", "--mode=dev-container", "--smp=1", "--memory=1G"]
    dev.pop("entrypoint")
    problems = redpanda_durability_problems(dev)
    assert len(problems) == 3 and "developer mode" in problems[0] and "fsync=false" in problems[1]
    small = copy.deepcopy(good)
    small["command"] = [c if not str(c).startswith("--smp") else "--smp=2" for c in small["command"]]
    assert redpanda_durability_problems(small) == ["--smp and --memory must give each core at least 1 GiB"]
    swapped = copy.deepcopy(good)
    swapped["entrypoint"] = ["/bin/sh", "-c", 'exec /entrypoint.sh "$@"; rpk redpanda mode production', "x"]
    assert len(redpanda_durability_problems(swapped)) == 1


def test_redpanda_runs_durable_fsync_on_and_developer_mode_off():
    assert redpanda_durability_problems(SERVICES["redpanda"]) == []


def test_docs_state_the_brokers_durability():
    text = DOCS.read_text()
    section = text[text.index("### Durability"):]
    section = section[:section.index("\n## ")] if "\n## " in section else section
    for needed in ("fsync", "developer_mode", "rpk redpanda mode production", "--unsafe-bypass-fsync=false",
                   "acks=all", "make down"):
        assert needed in section, f"docs/deployment.md, Durability, does not mention {needed}"


# ---------------------------------------------------------------------------------------
# Alerting: Prometheus -> Alertmanager -> a webhook, in compose and in the native stack
# ---------------------------------------------------------------------------------------

ALERTMANAGER_DIR = ROOT / "deployment" / "alertmanager"
ALERTMANAGER_CONFIG = ALERTMANAGER_DIR / "alertmanager.yml"


def tool(name: str) -> str:
    import shutil

    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is missing: `wotr stack up` installs it (Debian packages prometheus, prometheus-alertmanager)")
    return path


def receiver_problems(config: Mapping[str, Any], services: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every route names a receiver that exists; every webhook posts to a compose service
    on the port that service listens on."""
    receivers = {r["name"]: r for r in config.get("receivers", [])}
    problems = []
    routes, todo = [], [config.get("route") or {}]
    while todo:
        route = todo.pop()
        routes.append(route)
        todo += route.get("routes", [])
    for route in routes:
        if route.get("receiver", config["route"].get("receiver")) not in receivers:
            problems.append(f"route to unknown receiver {route.get('receiver')!r}")
    for name, receiver in receivers.items():
        configs = [c for key, value in receiver.items() if key.endswith("_configs") for c in value]
        if not configs:
            problems.append(f"receiver {name} sends nowhere")
        for hook in receiver.get("webhook_configs", []):
            url = urlsplit(hook["url"])
            if url.hostname not in services:
                problems.append(f"receiver {name}: {hook['url']} is not a compose service")
                continue
            port = environment(services[url.hostname]).get("PORT")
            if str(url.port) != port:
                problems.append(f"receiver {name}: {hook['url']} but {url.hostname} listens on {port}")
    return problems


def test_receiver_checker_rejects_unknown_receivers_and_wrong_webhooks():
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    config["route"]["routes"] = [{"receiver": "pager", "matchers": ['severity="page"']}]
    config["receivers"].append({"name": "silent"})
    config["receivers"][0]["webhook_configs"][0]["url"] = "http://alert-webhook:9999/alerts"
    assert receiver_problems(config, SERVICES) == [
        "route to unknown receiver 'pager'", "receiver webhook: http://alert-webhook:9999/alerts but alert-webhook "
        "listens on 8080", "receiver silent sends nowhere"]


def test_compose_prometheus_sends_alerts_to_alertmanager_which_posts_to_the_webhook():
    prometheus = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = [t for am in prometheus["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]]
    assert targets == ["alertmanager:9093"]
    assert 9093 in published("alertmanager") and image_pin_problem(SERVICES["alertmanager"]["image"]) is None
    assert SERVICES["prometheus"]["depends_on"]["alertmanager"] == {"condition": "service_healthy"}
    flags = dict(str(a).split("=", 1) for a in SERVICES["alertmanager"]["command"])
    assert mounts("alertmanager")[flags["--config.file"]] == ALERTMANAGER_CONFIG
    assert flags["--cluster.listen-address"] == "", "one Alertmanager: no gossip port"
    assert flags["--storage.path"] in [str(v).split(":")[1] for v in SERVICES["alertmanager"]["volumes"]]
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    assert receiver_problems(config, SERVICES) == []
    assert all(hook.get("send_resolved") for r in config["receivers"] for hook in r.get("webhook_configs", []))
    webhook = SERVICES["alert-webhook"]
    script = mounts("alert-webhook")
    assert script and all(path.is_file() for path in script.values())
    assert webhook["command"][-1] in script and image_pin_problem(webhook["image"]) is None
    assert str(webhook.get("user", "0")).split(":")[0] not in ("0", "root")


def test_alertmanager_configs_pass_amtool_and_prometheus_configs_pass_promtool(tmp_path):
    from wotr_testing.stack.paths import StackPaths
    from wotr_testing.stack.stack import SERVICE_TYPES

    services = {cls.name: cls(StackPaths(tmp_path, 0)) for cls in SERVICE_TYPES}
    (tmp_path / "alertmanager.yml").write_text(services["alertmanager"].render_config())
    native = yaml.safe_load(services["prometheus"].render_config())
    native["rule_files"] = []  # the rules themselves: tests/unit/test_observability_static.py
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(native))
    for command in ([tool("amtool"), "check-config", str(ALERTMANAGER_CONFIG)],
                    [tool("amtool"), "check-config", str(tmp_path / "alertmanager.yml")],
                    [tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG)],
                    [tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("offset", [0, 20000])
def test_native_prometheus_sends_to_the_native_alertmanager(tmp_path, offset):
    from wotr_testing.stack.paths import StackPaths
    from wotr_testing.stack.stack import SERVICE_NAMES, SERVICE_TYPES

    assert "alertmanager" in SERVICE_NAMES
    services = {cls.name: cls(StackPaths(tmp_path, offset)) for cls in SERVICE_TYPES}
    alertmanager, prometheus = services["alertmanager"], services["prometheus"]
    config = yaml.safe_load(prometheus.render_config())
    targets = [t for am in config["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]]
    assert targets == [alertmanager.endpoint]
    ports = [port for service in services.values() for port in service.ports]
    assert len(ports) == len(set(ports)), f"two services of the stack share a port: {ports}"
    flags = dict(a.split("=", 1) for a in alertmanager.command()[1:])
    assert flags["--web.listen-address"] == alertmanager.endpoint and alertmanager.endpoint.startswith("127.0.0.1:")
    assert flags["--cluster.listen-address"] == ""
    routed = yaml.safe_load(alertmanager.render_config())
    (receiver,) = routed["receivers"]
    assert routed["route"]["receiver"] == receiver["name"]
    url = urlsplit(receiver["webhook_configs"][0]["url"])
    assert url.hostname == "127.0.0.1" and url.port not in ports
    assert alertmanager.exports() == {"ALERTMANAGER_URL": f"http://{alertmanager.endpoint}"}


# ---------------------------------------------------------------------------------------
# Reproducible installs: constraints.txt
# ---------------------------------------------------------------------------------------

CONSTRAINTS = ROOT / "constraints.txt"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_constraints(text: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        assert match, f"constraints.txt: {line!r} is not name==version"
        name = canonical(match.group(1))
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = match.group(2)
    return pins


def declared_requirements() -> dict[str, list[str]]:
    """Where -> requirement strings, for the core dependencies and every extra."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {"dependencies": project["dependencies"], **{f"extra {k}": v for k, v in project["optional-dependencies"].items()}}


def pin_problems(declared: Mapping[str, list[str]], pins: Mapping[str, str]) -> list[str]:
    from packaging.requirements import Requirement

    problems = []
    for where, requirements in declared.items():
        for text in requirements:
            requirement = Requirement(text)
            name = canonical(requirement.name)
            if name == "wotr":
                continue  # the project's own extras, checked where they are declared
            if name not in pins:
                problems.append(f"{where}: {text} is not pinned in constraints.txt")
            elif not requirement.specifier.contains(pins[name], prereleases=True):
                problems.append(f"{where}: {text} but constraints.txt pins {pins[name]}")
    return problems


def test_pin_checker_rejects_missing_and_conflicting_pins():
    declared = {"extra x": ["alpha>=2", "beta[fast]==1.0", "wotr[x]"]}
    assert pin_problems(declared, {"alpha": "1.5", "gamma": "1"}) == [
        "extra x: alpha>=2 but constraints.txt pins 1.5", "extra x: beta[fast]==1.0 is not pinned in constraints.txt"]
    with pytest.raises(AssertionError, match="not name==version"):
        read_constraints("-e ../wotr\n")


def test_every_declared_dependency_is_pinned_in_constraints():
    pins = read_constraints(CONSTRAINTS.read_text())
    assert "wotr" not in pins, "the project itself is not a constraint"
    assert pin_problems(declared_requirements(), pins) == []


def test_the_extras_that_dependencies_ask_for_are_pinned_too():
    """`litestar[standard]`, `psycopg[binary]`, ...: what those extras bring is pinned as well
    (read from the installed packages' metadata)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    pins = read_constraints(CONSTRAINTS.read_text())
    missing = []
    for requirements in declared_requirements().values():
        for requirement in map(Requirement, requirements):
            if not requirement.extras or canonical(requirement.name) == "wotr":
                continue
            try:
                brought = [Requirement(r) for r in metadata.requires(requirement.name) or []]
            except metadata.PackageNotFoundError:
                continue
            for extra in requirement.extras:
                for dep in brought:
                    if dep.marker and dep.marker.evaluate({"extra": extra}) and canonical(dep.name) not in pins:
                        if dep.marker.evaluate({"extra": ""}):
                            continue  # not specific to the extra (and then a plain dependency, checked above)
                        missing.append(f"{requirement.name}[{extra}] -> {dep}")
    assert missing == []


def test_make_installs_with_the_constraints_and_has_a_lock_target():
    makefile = (ROOT / "Makefile").read_text()
    installs = [line.strip() for line in makefile.splitlines()
                if re.search(r"pip install\b", line) and "--no-deps" not in line and "--upgrade pip" not in line]
    resolving = [line for line in installs if "--dry-run" not in line]
    assert resolving, "no pip install in the Makefile"
    assert [line for line in resolving if "-c constraints.txt" not in line] == []
    for stamp in ("$(RUN_STAMP)", "$(STAMP)"):
        prerequisites = re.search(rf"^{re.escape(stamp)}:([^|\n]*)", makefile, re.M).group(1).split()
        assert "constraints.txt" in prerequisites, f"{stamp} is not rebuilt when constraints.txt changes"
    assert "lock" in make_targets(makefile)
    lock = re.search(r"^lock:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert "'.[test,bench]'" in lock and "> constraints.txt" in lock
    extras = {k.removeprefix("extra ") for k in declared_requirements() if k.startswith("extra ")}
    locked = set(re.search(r"'\.\[([^\]]+)\]'", lock).group(1).split(","))
    test_closure = {"test", "all", "testing", "api", "embedded", "clickhouse", "minio", "kafka", "postgres", "telemetry", "etl"}
    assert extras <= test_closure | locked, f"extras make lock does not resolve: {extras - test_closure - locked}"


def test_the_images_install_with_the_constraints():
    for stage in WOTR_STAGES:
        for keyword, args in stage.instructions:
            if keyword == "RUN" and re.search(r"\bpip install\b", args) and "--no-deps" not in args:
                assert "-c constraints.txt" in args, f"{stage.name}: {args}"
                steps = [(kw, a) for s in lineage(WOTR_STAGES, stage) for kw, a in s.instructions]
                copied = [i for i, (kw, a) in enumerate(steps) if kw == "COPY" and "constraints.txt" in a.split()]
                assert copied and copied[0] < steps.index((keyword, args)), f"{stage.name}: constraints.txt not copied first"
    ignored = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    assert not any(Path("constraints.txt").match(p) for p in ignored), ".dockerignore keeps constraints.txt out"


# ---------------------------------------------------------------------------------------
# The ETL's Spark cluster: spark-master and spark-worker, and the etl service on them
# ---------------------------------------------------------------------------------------

SPARK_SERVICES = ("spark-master", "spark-worker")


def spark_class_command(name: str) -> tuple[str, list[str], dict[str, str]]:
    """The class a spark-class service runs, its positional arguments and its --flags."""
    main, *rest = [str(part) for part in SERVICES[name]["command"]]
    positional, flags, i = [], {}, 0
    while i < len(rest):
        if rest[i].startswith("--"):
            flags[rest[i]] = rest[i + 1]
            i += 2
        else:
            positional.append(rest[i])
            i += 1
    return main, positional, flags


def test_the_spark_services_run_the_etl_images_spark():
    """Master and worker are the ETL image running `spark-class`: one Spark version, one
    Python (the executors run the driver's interpreter path) and the s3a jars at one path."""
    etl = SERVICES["etl"]
    for name in SPARK_SERVICES:
        service = SERVICES[name]
        assert (service["image"], build_of(service)) == (etl["image"], build_of(etl)), name
        assert service["entrypoint"] == ["spark-class"], name
        assert service.get("profiles") == ["etl"], "started with the ETL, by make compose-etl"
        assert service["hostname"] == name and str(service.get("restart")) == "unless-stopped"
        assert not service.get("ports"), f"{name}: Spark's ports and web UI stay inside the compose network"
    venv_on_path = [a for s in lineage(WOTR_STAGES, STAGE["etl"]) for kw, a in s.instructions
                    if kw == "ENV" and "PATH=/opt/wotr/bin:" in a]
    assert venv_on_path, "spark-class (installed by pyspark into /opt/wotr/bin) is on the image's PATH"
    assert any("procps" in a for s in lineage(WOTR_STAGES, STAGE["etl"]) for kw, a in s.instructions if kw == "RUN")


def test_the_spark_worker_registers_with_the_master_and_both_report_health():
    main, positional, master = spark_class_command("spark-master")
    assert main == "org.apache.spark.deploy.master.Master" and positional == []
    assert master["--host"] == "spark-master"
    url = f"spark://spark-master:{master['--port']}"
    main, positional, worker = spark_class_command("spark-worker")
    assert main == "org.apache.spark.deploy.worker.Worker" and positional == [url]
    assert worker["--host"] == "spark-worker" and worker["--work-dir"].startswith("/tmp/")  # writable by uid 10001
    assert SERVICES["spark-worker"]["depends_on"] == {"spark-master": {"condition": "service_healthy"}}
    master_check = " ".join(SERVICES["spark-master"]["healthcheck"]["test"])
    assert f"http://127.0.0.1:{master['--webui-port']}/json/" in master_check and "ALIVE" in master_check
    worker_check = " ".join(SERVICES["spark-worker"]["healthcheck"]["test"])
    assert f"http://spark-master:{master['--webui-port']}/json/" in worker_check
    assert "'spark-worker'" in worker_check and "ALIVE" in worker_check  # healthy once registered


def test_the_etl_service_points_at_the_compose_spark_master():
    _main, _positional, master = spark_class_command("spark-master")
    _main, _positional, worker = spark_class_command("spark-worker")
    settings = Settings.from_env(environment(SERVICES["etl"]))
    assert settings.spark_master == f"spark://spark-master:{master['--port']}"
    # Executors connect back to the driver at the run container's service name.
    assert settings.spark_driver_host == "etl" and "etl" in SERVICES
    compose_etl = re.search(r"^compose-etl:\n\t(.+)$", MAKE_INCLUDE.read_text(), re.M).group(1).split()
    assert "--use-aliases" in compose_etl and compose_etl[compose_etl.index("run"):][-3:-1] == ["etl", "etl"]
    assert size_bytes(settings.spark_executor_memory) <= size_bytes(worker["--memory"])
    depends = SERVICES["etl"]["depends_on"]
    for name in SPARK_SERVICES:
        assert depends[name] == {"condition": "service_healthy"}, name
    for name in ("api", "consumer", "relay"):
        assert Settings.from_env(environment(SERVICES[name])).spark_master == "local[2]", name
