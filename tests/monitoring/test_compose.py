"""docker-compose.yml, validated offline (no Docker engine here) with Debian's docker-compose 1.29.

Besides `docker-compose config`, every command the stack runs from our image
must exist (module paths, CLI names), and every file it mounts or points at.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from functools import cache
from importlib.metadata import version
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from celery import Celery
from celery.bin import celery as celery_cli

from app import cli
from tests.support.processes import ROOT

COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
OUR_IMAGE = "panic-metrics:"
SERVICES = {
    "redis",
    "postgres",
    "migrate",
    "worker",
    "beat",
    "flower",
    "prometheus",
    "alertmanager",
    "grafana",
    "redis-exporter",
    "postgres-exporter",
    "node-exporter",
}
#: Images without a shell or an HTTP client: Prometheus's `up` watches them instead of a healthcheck.
NO_HEALTHCHECK = {"migrate", "beat", "redis-exporter", "postgres-exporter", "node-exporter"}


def docker_compose(*args: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary is not None, "docker-compose is not installed: run `make services` (scripts/test-services.sh)"
    argv = [binary, "--project-directory", str(ROOT), "-f", str(COMPOSE), "--env-file", str(env_file), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=False, cwd=ROOT)


@cache
def rendered() -> dict[str, Any]:
    """The stack as docker-compose resolves it with the example settings."""
    result = docker_compose("config")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = rendered()["services"]
    return found


def test_compose_file_is_valid() -> None:
    """`docker-compose config -q` accepts the file with the example settings."""
    result = docker_compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_run_without_the_secrets(tmp_path: Path) -> None:
    """With no .env, interpolation stops at the first missing password instead of running without one."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = docker_compose("config", "-q", env_file=empty)
    assert result.returncode != 0
    assert re.search(r"set (POSTGRES|REDIS)_PASSWORD in \.env", result.stderr), result.stderr


def test_no_secret_is_written_in_the_compose_file() -> None:
    """Every password, token or auth value is interpolated from .env or read from /run/secrets."""
    raw = yaml.safe_load(COMPOSE.read_text())
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|TOKEN|SECRET|AUTH", key):
                assert str(value).startswith(("${", "/run/secrets/")), f"{name}: {key}={value}"
            if key in {"DATABASE_URL", "BROKER_URL"}:
                assert re.search(r"://[^@]*\$\{\w+:\?[^}]*\}@", str(value)), f"{name}: {key} carries a literal password"
    examples = [p.read_text().strip() for p in (ROOT / "monitoring/secrets").glob("*.example")]
    examples += [line.split("=", 1)[1] for line in ENV_EXAMPLE.read_text().splitlines() if "=change-me" in line]
    text = COMPOSE.read_text()
    assert not [example for example in examples if example in text]


def test_every_service_is_there_pinned_with_its_volumes() -> None:
    """All the stack's services; images pinned to a version; state on named volumes."""
    assert set(services()) == SERVICES
    for name, service in services().items():
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+(\.\d+)?[\w.-]*", image), f"{name}: {image} is not pinned"
    named = set(rendered()["volumes"])
    for name in ("redis", "postgres", "worker", "beat", "prometheus", "alertmanager", "grafana"):
        volumes = [v["source"] for v in _volumes(services()[name]) if v["type"] == "volume"]
        assert set(volumes) <= named
        assert volumes, f"{name} keeps its state on no named volume"


def test_healthchecks_and_start_order() -> None:
    """Healthchecks where the image can run one; dependants wait for health or, for migrate, completion."""
    for name, service in services().items():
        assert ("healthcheck" in service) == (name not in NO_HEALTHCHECK), name
        for dependency, how in service.get("depends_on", {}).items():
            wanted = "service_completed_successfully" if dependency == "migrate" else "service_healthy"
            if dependency == "worker":  # Prometheus scrapes whatever is up; a sick worker is an alert
                wanted = "service_started"
            assert how["condition"] == wanted, f"{name} -> {dependency}"
    for name in ("worker", "beat"):
        assert services()[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_redis_keeps_every_acknowledged_message() -> None:
    """AOF on, fsync every second, and a full Redis refuses writes instead of evicting queued messages."""
    command = " ".join(services()["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    assert "--maxmemory-policy noeviction" in command


def test_flower_requires_authentication_at_a_fixed_version() -> None:
    """Flower runs with basic auth, and the flower installed is past CVE-2022-30034 (fixed in 1.2.0)."""
    flower = services()["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"]
    assert "FLOWER_BASIC_AUTH" in ENV_EXAMPLE.read_text()
    major, minor = (int(part) for part in version("flower").split(".")[:2])
    assert (major, minor) >= (1, 2)


@pytest.mark.parametrize("name", sorted(n for n in SERVICES if n in {"migrate", "worker", "beat", "flower"}))
def test_every_command_of_our_image_exists(name: str) -> None:
    """`celery -A <module> <command>` and `panic-metrics <command>` resolve to a real app and command."""
    service = services()[name]
    assert service["image"].startswith(OUR_IMAGE)
    command = service["command"]
    if command[0] == "celery":
        assert command[1] == "-A"
        module = importlib.import_module(command[2])
        assert isinstance(module.app, Celery), f"{command[2]} has no Celery app named `app`"
        # celery's own commands and those of installed plugins (flower registers `flower`)
        assert command[3] in celery_cli.celery.commands, f"`celery {command[3]}` does not exist"
    else:
        assert command[0] == "panic-metrics"
        assert shutil.which("panic-metrics", path=str(Path(sys.executable).parent)), "panic-metrics not installed"
        with pytest.raises(SystemExit) as exited:
            cli.main([command[1], "--help"])
        assert exited.value.code == 0
    for script in (service.get("healthcheck") or {}).get("test", [])[3:4]:
        compile(script, f"{name} healthcheck", "exec")  # python -c '...'


def _volumes(service: dict[str, Any]) -> list[dict[str, str]]:
    """docker-compose 1.29 renders volumes in the short syntax `source:target[:mode]`."""
    found = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        found.append({"type": "bind" if source.startswith("/") else "volume", "source": source, "target": target})
    return found


def _container_path_to_repo(service: dict[str, Any], path: str) -> Path | None:
    """The repository file a container path of a bind-mounted repository directory stands for."""
    for volume in _volumes(service):
        if volume["type"] != "bind" or not volume["source"].startswith(str(ROOT)):
            continue
        target = PurePosixPath(volume["target"])
        if PurePosixPath(path).is_relative_to(target):
            return Path(volume["source"]) / PurePosixPath(path).relative_to(target)
    return None


def test_every_mounted_file_exists() -> None:
    """Bind mounts from the repository exist; every config path a service is given lies in one and exists."""
    for name, service in services().items():
        for volume in _volumes(service):
            if volume["type"] == "bind" and volume["source"].startswith(str(ROOT)):
                assert Path(volume["source"]).exists(), f"{name}: {volume['source']}"
    prometheus, grafana = services()["prometheus"], services()["grafana"]
    config = _container_path_to_repo(prometheus, "/etc/prometheus/prometheus.yml")
    assert config is not None
    assert config.is_file()
    alertmanager_config = re.search(r"(/etc/alertmanager/\S+)", services()["alertmanager"]["command"][0])
    assert alertmanager_config is not None
    found = _container_path_to_repo(services()["alertmanager"], alertmanager_config.group(1))
    assert found is not None
    assert found.is_file()
    home = _container_path_to_repo(grafana, grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home is not None
    assert home.is_file()
    provisioning = yaml.safe_load((ROOT / "monitoring/grafana/provisioning/dashboards/panic-metrics.yml").read_text())
    dashboards = _container_path_to_repo(grafana, provisioning["providers"][0]["options"]["path"])
    assert dashboards is not None
    assert sorted(p.name for p in dashboards.glob("*.json")) == ["business.json", "http.json", "worker-overview.json"]
    for secret in rendered()["secrets"].values():
        assert Path(secret["file"] + ".example").is_file(), f"no example for {secret['file']}"
    # The scrape credentials Prometheus reads from a file are a secret Compose gives it.
    scrape = yaml.safe_load((ROOT / "monitoring/prometheus/prometheus.yml").read_text())
    given = {f"/run/secrets/{s['source']}" for s in prometheus["secrets"]}
    for job in scrape["scrape_configs"]:
        if "basic_auth" in job:
            assert job["basic_auth"]["password_file"] in given


def test_prometheus_finds_the_stacks_worker_through_its_targets_files() -> None:
    """The worker job's file_sd patterns lie in Prometheus's mount and match files listing `worker:METRICS_PORT`."""
    scrape = yaml.safe_load((ROOT / "monitoring/prometheus/prometheus.yml").read_text())
    (job,) = (job for job in scrape["scrape_configs"] if job["job_name"] == "panic-metrics-worker")
    assert "static_configs" not in job  # one source of hosts: the targets files
    patterns = [pattern for sd in job["file_sd_configs"] for pattern in sd["files"]]
    targets: list[str] = []
    for pattern in patterns:
        # Prometheus resolves a relative pattern against the config file's directory.
        in_container = str(PurePosixPath("/etc/prometheus") / pattern)
        found = _container_path_to_repo(services()["prometheus"], in_container)
        assert found is not None, f"{pattern} is not mounted into the prometheus service"
        files = sorted(found.parent.glob(found.name))
        assert files, f"no file matches {pattern}"
        for path in files:
            for group in yaml.safe_load(path.read_text()):
                assert set(group) <= {"targets", "labels"}, path
                targets.extend(group["targets"])
    assert all(re.fullmatch(r"[\w.-]+:\d+", target) for target in targets), targets
    assert targets == [f"worker:{services()['worker']['environment']['METRICS_PORT']}"]
