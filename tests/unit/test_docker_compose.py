"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The stack cannot be started here, so what can go wrong statically is checked:
every service has an image or a build, the queuestream services run real
``queuestream`` subcommands with options that exist and parse (through the
CLI's own click command), their environment only names settings queuestream
reads (and loads into the intended settings), they point at the services of
the stack, and the Dockerfile installs this project.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import yaml
from pydantic import AliasChoices

from queuestream.cli import app
from queuestream.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose().get("services")
    assert isinstance(services, dict) and services, "docker-compose.yml has no services"
    return services


def _queuestream_services() -> dict[str, dict[str, Any]]:
    """The services built from this repository's Dockerfile."""
    found = {name: svc for name, svc in _services().items() if "build" in svc}
    assert found, "no service is built from the Dockerfile"
    return found


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["NAME=value", ...]
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    assert command, "a queuestream service needs a command"
    if isinstance(command, str):
        return command.split()
    return [str(part) for part in command]


def _dockerfile() -> str:
    assert DOCKERFILE.is_file(), "docker-compose.yml builds from ./Dockerfile, which is missing"
    # join continuation lines, drop comments
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = (line.strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("#"))


def _instructions(name: str) -> list[str]:
    return [
        line.split(None, 1)[1] if " " in line else ""
        for line in _dockerfile().splitlines()
        if line.split(None, 1)[0].upper() == name
    ]


def _entrypoint(service: dict[str, Any]) -> list[str]:
    entrypoint = service.get("entrypoint")
    if entrypoint:
        return entrypoint.split() if isinstance(entrypoint, str) else [str(p) for p in entrypoint]
    found = _instructions("ENTRYPOINT")
    assert found, "the Dockerfile has no ENTRYPOINT and the service sets none"
    parsed = json.loads(found[-1])  # exec form
    assert isinstance(parsed, list)
    return [str(p) for p in parsed]


def _settings_env_names() -> dict[str, str]:
    """Environment variable name (upper case) -> Settings field it sets."""
    names: dict[str, str] = {"QUEUESTREAM_CONFIG": "(config file)"}
    prefix = Settings.model_config.get("env_prefix", "")
    for field_name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            choices = [c for c in alias.choices if isinstance(c, str)]
        elif isinstance(alias, str):
            choices = [alias]
        else:
            choices = [f"{prefix}{field_name}"]
        for choice in choices:
            names[choice.upper()] = field_name
    return names


# ------------------------------------------------------------------ services --


def test_every_service_has_an_image_or_a_build() -> None:
    for name, service in _services().items():
        assert service.get("image") or service.get("build"), f"service {name}: no image, no build"


def test_the_stack_has_kafka_a_registry_postgres_and_two_queuestream_services() -> None:
    services = _services()
    images = {name: str(svc.get("image", "")) for name, svc in services.items()}
    assert any(re.fullmatch(r"apache/kafka:4\.[\w.-]+", i) for i in images.values()), images
    assert any(
        i.startswith(("apicurio/apicurio-registry-mem:", "confluentinc/cp-schema-registry:"))
        for i in images.values()
    ), images
    assert any(re.fullmatch(r"postgres:16(\.[\w.-]+)?", i) for i in images.values()), images
    subcommands = {_subcommand(_command(svc))[0] for svc in _queuestream_services().values()}
    assert {"sim", "produce"} <= subcommands


def test_kafka_is_a_single_kraft_node_whose_transactions_work() -> None:
    (kafka,) = [
        s for s in _services().values() if str(s.get("image", "")).startswith("apache/kafka:")
    ]
    env = _environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    # one node: the transaction state log must accept replication 1, or init_transactions hangs
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert len(voters) == 1 and voters[0].startswith(f"{env['KAFKA_NODE_ID']}@")


def test_depends_on_names_services_of_the_stack() -> None:
    services = _services()
    for name, service in services.items():
        depends = service.get("depends_on") or []
        for other in depends:
            assert other in services, f"service {name} depends on unknown service {other}"


# ---------------------------------------------------------------- Dockerfile --


def test_dockerfile_installs_this_project_on_python_311_slim() -> None:
    (base,) = _instructions("FROM")
    assert base.split()[0] == "python:3.11-slim"
    runs = " ".join(_instructions("RUN"))
    assert re.search(r"pip3? install(\s+-\S+)*\s+\.(\s|$|\[)", runs), (
        f"no 'pip install .' in the Dockerfile's RUN lines: {runs}"
    )
    copied = " ".join(_instructions("COPY") + _instructions("ADD"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= set(project["tool"]["setuptools"]["package-dir"].values())
    for path in sorted(needed):
        parts = path.split("/")
        folders = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]  # a parent copies it too
        assert any(
            re.search(rf"(^|\s){re.escape(folder)}(\s|/|$)", copied) for folder in folders
        ) or re.search(r"COPY\s+\.\s", f"COPY {copied}"), (
            f"the Dockerfile does not copy {path}, which `pip install .` needs"
        )


def test_dockerignore_keeps_the_local_caches_out_of_the_build_context() -> None:
    ignore = ROOT / ".dockerignore"
    assert ignore.is_file()
    lines = {line.strip().rstrip("/") for line in ignore.read_text(encoding="utf-8").splitlines()}
    assert {".venv", ".cache", "var"} <= lines


def test_the_image_runs_the_queuestream_command() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    for name, service in _queuestream_services().items():
        assert _entrypoint(service) == ["queuestream"], f"service {name}"
        assert "queuestream" in scripts


# ------------------------------------------------------------------ commands --


def _global_options() -> dict[str, bool]:
    """Global option -> takes a value."""
    group = typer.main.get_command(app)
    found: dict[str, bool] = {}
    for param in group.params:
        for opt in [*param.opts, *getattr(param, "secondary_opts", [])]:
            found[opt] = not getattr(param, "is_flag", False)
    return found


def _subcommand(argv: list[str]) -> tuple[str, list[str], list[str]]:
    """(subcommand, global arguments before it, its own arguments)."""
    options = _global_options()
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        opt = argv[i].split("=", 1)[0]
        assert opt in options, f"unknown global option {argv[i]!r} in {argv}"
        i += 2 if options[opt] and "=" not in argv[i] else 1
    assert i < len(argv), f"no subcommand in {argv}"
    return argv[i], argv[:i], argv[i + 1 :]


@pytest.mark.parametrize("service", sorted(_queuestream_services()))
def test_commands_are_real_subcommands_with_options_that_parse(service: str) -> None:
    argv = _command(_queuestream_services()[service])
    name, global_args, args = _subcommand(argv)
    group = typer.main.get_command(app)
    commands = group.commands  # type: ignore[attr-defined]
    assert name in commands, (
        f"{service}: `queuestream {name}` is not a command ({sorted(commands)})"
    )
    command = commands[name]
    known = {opt for p in command.params for opt in [*p.opts, *getattr(p, "secondary_opts", [])]}
    for token in args:
        if token.startswith("-"):
            assert token.split("=", 1)[0] in known, (
                f"{service}: `queuestream {name}` has no option {token} ({sorted(known)})"
            )
    # click parses them as the CLI would: values of the right type, nothing left over
    parent = group.make_context("queuestream", [*global_args, name])
    context = command.make_context(name, list(args), parent=parent)
    assert not context.args, f"{service}: unexpected arguments {context.args}"


def test_the_simulator_and_the_producer_run_as_asked() -> None:
    by_command: dict[str, dict[str, Any]] = {}
    group = typer.main.get_command(app)
    for service in _queuestream_services().values():
        name, global_args, args = _subcommand(_command(service))
        parent = group.make_context("queuestream", [*global_args, name])
        command = group.commands[name]  # type: ignore[attr-defined]
        by_command[name] = command.make_context(name, list(args), parent=parent).params
    assert by_command["sim"]["rate"] == 20
    assert by_command["sim"]["actions"] == 1_000_000
    assert by_command["produce"]["interval"] == 5


# --------------------------------------------------------------- environment --


@pytest.mark.parametrize("service", sorted(_queuestream_services()))
def test_environment_names_only_settings_queuestream_reads(service: str) -> None:
    known = _settings_env_names()
    for variable in _environment(_queuestream_services()[service]):
        assert variable.upper() in known, (
            f"{service}: {variable} is not read by queuestream's settings; known: {sorted(known)}"
        )


@pytest.mark.parametrize("service", sorted(_queuestream_services()))
def test_environment_loads_into_the_intended_settings(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in list(_settings_env_names()):
        monkeypatch.delenv(variable, raising=False)
    env = _environment(_queuestream_services()[service])
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    settings = load_settings()
    known = _settings_env_names()
    for variable, value in env.items():
        field = known[variable.upper()]
        assert str(getattr(settings, field)) == value, f"{service}: {variable} -> {field}"


def test_the_queuestream_services_reach_the_stack_by_service_name() -> None:
    services = _services()
    producer = next(
        s for s in _queuestream_services().values() if _subcommand(_command(s))[0] == "produce"
    )
    env = _environment(producer)
    for name, svc in _queuestream_services().items():
        svc_env = _environment(svc)
        subcommand = _subcommand(_command(svc))[0]
        if subcommand == "monitor":  # Kafka only: the topics and groups the others use
            for shared in ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL"):
                assert svc_env.get(shared) == env[shared], f"{name}: {shared} as the producer's"
            continue
        consumer = subcommand == "consume"
        url = svc_env["QUEUESTREAM_TARGET_URL" if consumer else "QUEUESTREAM_SOURCE_URL"]
        database = urlsplit(url)
        assert database.scheme.startswith("postgresql"), database
        assert database.hostname in services
        assert str(services[database.hostname]["image"]).startswith("postgres:")
        db_env = _environment(services[database.hostname])
        if consumer:
            # a target database is made by the init script the postgres service mounts
            init = [v for v in services[database.hostname].get("volumes", []) if "initdb.d" in v]
            assert init, f"{name}: nothing creates the target database"
            script = (ROOT / init[0].split(":")[0]).read_text(encoding="utf-8")
            assert f"CREATE DATABASE {database.path.lstrip('/')};" in script
            for shared in ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL"):
                assert svc_env.get(shared) == env[shared], f"{name}: {shared} as the producer's"
        else:
            assert database.path.lstrip("/") == db_env.get(
                "POSTGRES_DB", db_env.get("POSTGRES_USER")
            )
        if db_env.get("POSTGRES_USER"):
            assert database.username == db_env["POSTGRES_USER"]

    host, port = env["KAFKA_BOOTSTRAP_SERVERS"].split(",")[0].rsplit(":", 1)
    assert host in services and str(services[host]["image"]).startswith("apache/kafka:")
    advertised = _environment(services[host])["KAFKA_ADVERTISED_LISTENERS"]
    assert f"//{host}:{port}" in advertised, "the producer must use an advertised listener"

    registry = urlsplit(env["SCHEMA_REGISTRY_URL"])
    assert registry.hostname in services
    image = str(services[registry.hostname]["image"])
    if image.startswith("apicurio/"):
        assert registry.path.rstrip("/") == "/apis/ccompat/v7", "Apicurio's Confluent API"
        assert registry.port == 8080
    else:
        assert registry.port == 8081
