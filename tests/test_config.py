"""Settings refuse bad configuration with one line naming the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.config import SANDBOX_API_KEY, ConfigError, hash_api_key, load_settings

LIVE = {
    "bulk360_mode": "live",
    "database_url": "postgresql+asyncpg://relay:pw@db.internal/relay",
    "bulk360_app_key": "k",
    "bulk360_app_secret": "s",
    "api_keys": f"billing:{hash_api_key('x')}",
    "dn_hook_token": "t",
    "_env_file": None,
}


def test_live_mode_with_everything_set_starts() -> None:
    settings = load_settings(**LIVE)
    assert settings.api_key_hashes == {hash_api_key("x"): "billing"}
    assert settings.effective_dn_hook_token == "t"
    assert not settings.sandbox


@pytest.mark.parametrize(
    "missing",
    ["database_url", "bulk360_app_key", "bulk360_app_secret", "api_keys", "dn_hook_token"],
)
def test_live_mode_refuses_to_start_naming_what_is_missing(missing: str) -> None:
    values = {k: v for k, v in LIVE.items() if k != missing}
    with pytest.raises(ConfigError) as exc:
        load_settings(**values)
    assert missing.upper() in str(exc.value)
    assert "\n" not in str(exc.value)


def test_live_mode_lists_every_missing_variable_in_one_line() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(bulk360_mode="live", _env_file=None)
    message = str(exc.value)
    for name in (
        "DATABASE_URL",
        "BULK360_APP_KEY",
        "BULK360_APP_SECRET",
        "API_KEYS",
        "DN_HOOK_TOKEN",
    ):
        assert name in message


def test_database_url_must_be_postgresql_and_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(database_url="mysql://relay:secret-pw@db/relay", _env_file=None)
    assert "DATABASE_URL" in str(exc.value) and "PostgreSQL" in str(exc.value)
    assert "secret-pw" not in str(exc.value)


def test_a_libpq_database_url_is_read_as_asyncpg() -> None:
    settings = load_settings(database_url="postgresql://u:p@h/db", _env_file=None)
    assert settings.database_url == "postgresql+asyncpg://u:p@h/db"


def test_sandbox_without_database_url_names_the_embedded_server_in_its_warning() -> None:
    settings = load_settings(_env_file=None)
    assert settings.database_url is None
    assert any("embedded PostgreSQL" in d for d in settings.sandbox_defaults_in_use())


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("api_keys", "billing-no-colon", "API_KEYS"),
        ("api_keys", "billing:nothex", "API_KEYS"),
        ("dn_allowed_cidrs", "10.0.0.0/8,not-a-cidr", "DN_ALLOWED_CIDRS"),
        ("bulk360_timeout_s", "0", "BULK360_TIMEOUT_S"),
        ("bulk360_timeout_s", "-5", "BULK360_TIMEOUT_S"),
        ("bulk360_max_concurrency", "0", "BULK360_MAX_CONCURRENCY"),
        ("max_recipients", "-1", "MAX_RECIPIENTS"),
        ("bulk360_mode", "production", "BULK360_MODE"),
        ("default_region", "Malaysia", "DEFAULT_REGION"),
    ],
)
def test_malformed_values_are_refused_naming_the_variable(
    field: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(**{field: value, "_env_file": None})
    assert expected in str(exc.value)


def test_sandbox_fills_gaps_with_named_defaults() -> None:
    settings = load_settings(_env_file=None)
    assert settings.sandbox
    assert settings.api_key_hashes == {hash_api_key(SANDBOX_API_KEY): SANDBOX_API_KEY}
    assert settings.uses_builtin_simulator
    defaults = " ".join(settings.sandbox_defaults_in_use())
    assert "API_KEYS" in defaults and "DN_HOOK_TOKEN" in defaults and "BULK360_APP_KEY" in defaults
    # A random DN token per start, stable within one Settings object.
    assert settings.effective_dn_hook_token == settings.effective_dn_hook_token
    assert load_settings(_env_file=None).effective_dn_hook_token != settings.effective_dn_hook_token


def test_sandbox_with_its_own_upstream_does_not_start_the_builtin_simulator() -> None:
    settings = load_settings(bulk360_base_url="http://127.0.0.1:9000/", _env_file=None)
    assert not settings.uses_builtin_simulator
    assert settings.bulk360_base_url == "http://127.0.0.1:9000"


def test_env_file_is_read(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = tmp_path / ".env"  # type: ignore[operator]
    env.write_text("MAX_RECIPIENTS=7\nLOG_LEVEL=debug\n")
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    settings = load_settings()
    assert settings.max_recipients == 7
    assert settings.log_level == "DEBUG"


def test_serve_refuses_bad_configuration_with_one_line(tmp_path: object) -> None:
    env = {"BULK360_MODE": "live", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "DN_HOOK_TOKEN" in lines[0] and "API_KEYS" in lines[0]
