"""docker-compose.yml: the services, their wiring, and command lines main.py itself accepts.

No Docker engine runs here, so nothing is started; when the `docker-compose` command is
installed (Debian package `docker-compose`), `docker-compose config` must accept the file too.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from console.app import build_parser as console_parser
from main import build_parser as node_parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV = {"MYSQL_ROOT_PASSWORD": "test-password"}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} (and $$ for a literal $)."""
    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in env and env[name] != "":
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg or ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value).replace("$$", "$")


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_services_and_wiring(services):
    assert {"mysql", "entry", "sn", "en", "console"} <= set(services)
    mysql = services["mysql"]
    assert mysql["image"].startswith("mysql:8") and "healthcheck" in mysql
    assert any(v.endswith(":/var/lib/mysql") for v in mysql["volumes"])
    for name in ("entry", "sn"):
        assert services[name]["depends_on"]["mysql"]["condition"] == "service_healthy"
        assert "healthcheck" in services[name]
    assert services["sn"]["depends_on"]["entry"]["condition"] == "service_healthy"
    assert services["en"]["depends_on"]["entry"]["condition"] == "service_healthy"
    assert services["entry"]["ports"] == ["${ENTRY_PORT:-8080}:8080", "${ENROL_PORT:-18080}:18080",
                                          "127.0.0.1:${EXPLORER_PORT:-8443}:8443"]
    entry_command = services["entry"]["command"]
    assert entry_command[entry_command.index("--http") + 1] == "8443"  # the explorer, on the published port
    assert "ports" not in services["en"] and "container_name" not in services["en"]  # scalable
    assert services["console"]["profiles"] == ["console"]


def test_every_command_line_parses_with_the_programs_own_parser(services):
    nodes = {}
    for name, service in services.items():
        argv = [interpolate(a, ENV) for a in service.get("entrypoint", []) + service.get("command", [])]
        if argv[:2] == ["python", "main.py"]:
            nodes[name] = node_parser().parse_args(argv[2:])
        elif argv[:2] == ["python", "Console.py"]:
            args = console_parser().parse_args(argv[2:])
            assert (args.ip, args.port) == ("entry", 8080)
    assert nodes["entry"].is_entry and nodes["entry"].nt == "SN" and nodes["entry"].entry == "entry:8080"
    assert nodes["sn"].nt == "SN" and not nodes["sn"].is_entry and nodes["sn"].entry == "entry:8080"
    assert nodes["en"].nt == "EN" and nodes["en"].entry == "entry:8080"
    databases = {nodes[n].db.rsplit("/", 1)[1] for n in ("entry", "sn")}
    assert len(databases) == 2  # each supernode keeps its own copy of the chain
    assert all(nodes[n].db.startswith("mysql+pymysql://root:test-password@mysql:3306/") for n in ("entry", "sn"))


def test_settings_come_from_the_environment_and_no_secret_is_in_the_file(services):
    text = COMPOSE.read_text()
    assert "MYSQL_ROOT_PASSWORD: ${MYSQL_ROOT_PASSWORD:?" in text
    for service in ("entry", "sn", "en"):
        env = services[service]["environment"]
        assert all(re.fullmatch(r"FL_[A-Z_]+", k) for k in env)
        assert {"FL_HEARTBEAT_INTERVAL", "FL_DEAD_AFTER", "FL_ROUND_TIMEOUT", "FL_TORCH_THREADS"} <= set(env)
    for service in services.values():  # the admin token is read from the entry node's volume, never written here
        argv = service.get("entrypoint", []) + service.get("command", [])
        assert "--token" not in argv and "FEDLEDGER_TOKEN" not in service.get("environment", {})
    assert "/entry-home/admin.token" in services["console"]["entrypoint"]
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_nodes_enrol_once_with_tokens_the_enrol_service_makes(services):
    from main import build_token_parser
    from node.health import build_parser as health_parser

    made = {}
    for step in services["enrol"]["command"][0].split(";"):
        once, _, command = step.partition("||")
        argv, _, target = command.strip().partition(" > ")
        args = shlex.split(argv)
        assert args[:3] == ["python", "main.py", "token"] and f"[ -s {target} ]" in once  # made once
        made[target] = build_token_parser().parse_args(args[3:])
    assert sorted(t.role for t in made.values()) == ["EN", "SN"]
    assert all(str(t.home) == "/entry-home" and t.port == 8080 for t in made.values())
    assert "entry-home:/entry-home" in services["enrol"]["volumes"]
    assert services["entry"]["depends_on"]["enrol"]["condition"] == "service_completed_successfully"
    for name, role in (("sn", "SN"), ("en", "EN")):
        args = node_parser().parse_args(services[name]["command"][2:])
        assert made[str(args.token_file)].role == role and "tokens:/tokens:ro" in services[name]["volumes"]
    for name in ("entry", "sn"):  # health checks present the node's own certificate
        check = health_parser().parse_args(services[name]["healthcheck"]["test"][4:])
        assert str(check.tls) == "/home/node/tls" and not check.insecure
    assert "tokens" in yaml.safe_load(COMPOSE.read_text())["volumes"]


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="the docker-compose command is not installed (Debian package docker-compose)")
def test_docker_compose_config_accepts_the_file():
    result = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"], cwd=ROOT,
                            env={**os.environ, **ENV}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_dockerfile_installs_the_requirements_and_generates_the_stubs():
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("# ") and "FROM python:3.11-slim" in text
    assert "-r requirements.txt" in text and "python proto/generate.py" in text
