"""Which callback URLs a send may name (CONTRACT §4.5), and the CALLBACK_* settings."""

from __future__ import annotations

import pytest

from app.callbacks.service import callback_url_for
from app.config import SANDBOX_CALLBACK_SECRET, ConfigError, Settings, load_settings
from app.errors import AppError
from tests.callbacks.conftest import SECRET


def _settings(**values: object) -> Settings:
    return load_settings(_env_file=None, **values)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]/hook",
        "http://[::ffff:169.254.169.254]/hook",
        "ftp://billing.internal/hook",
        "/relative/hook",
        "http:///no-host",
        "https://billing.internal:99999/hook",
        "https://billing.internal/" + "x" * 2048,
    ],
)
def test_refused_callback_urls_are_422_naming_the_field(url: str) -> None:
    with pytest.raises(AppError) as caught:
        callback_url_for(_settings(), "tester", url)
    assert caught.value.status == 422
    assert caught.value.detail.startswith("callback_url:")


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://billing.internal/hook", True),
        ("https://BILLING.internal/hook", True),
        ("https://a.svc.cluster.local/hook", True),
        ("https://svc.cluster.local/hook", False),  # the wildcard needs a label before it
        ("http://10.1.2.3:8080/hook", True),
        ("http://11.1.2.3/hook", False),
        ("https://evil.example/hook?to=billing.internal", False),
    ],
)
def test_the_allow_list_takes_names_wildcards_and_cidrs(url: str, allowed: bool) -> None:
    settings = _settings(callback_allowed_hosts="billing.internal, *.svc.cluster.local, 10.0.0.0/8")
    if allowed:
        assert callback_url_for(settings, "tester", url) == url
        return
    with pytest.raises(AppError) as caught:
        callback_url_for(settings, "tester", url)
    assert "CALLBACK_ALLOWED_HOSTS" in caught.value.detail
    assert "to=" not in caught.value.detail  # the host only, never the query


def test_the_api_keys_default_applies_and_the_request_wins() -> None:
    settings = _settings(callback_urls='{"tester": "https://billing.internal/sms"}')
    assert callback_url_for(settings, "tester", None) == "https://billing.internal/sms"
    assert callback_url_for(settings, "other", None) is None
    mine = "https://mine.internal/x"
    assert callback_url_for(settings, "tester", mine) == mine


def test_live_mode_without_a_signing_secret_refuses_a_callback_url() -> None:
    live = {
        "bulk360_mode": "live",
        "bulk360_app_key": "k",
        "bulk360_app_secret": "s",
        "api_keys": "tester:" + "0" * 64,
        "dn_hook_token": "t",
        "database_url": "postgresql+asyncpg://u@h/db",
    }
    settings = _settings(**live)
    with pytest.raises(AppError) as caught:
        callback_url_for(settings, "tester", "https://billing.internal/x")
    assert (caught.value.status, caught.value.code) == (422, "callbacks_not_configured")
    with pytest.raises(ConfigError, match="CALLBACK_URLS needs CALLBACK_SIGNING_SECRETS"):
        _settings(**live, callback_urls='{"tester": "https://billing.internal/x"}')
    assert _settings(**live, callback_signing_secrets=SECRET).callback_secrets == (SECRET,)


def test_sandbox_signs_with_the_public_sandbox_secret_and_names_it() -> None:
    settings = _settings()
    assert settings.callback_secrets == (SANDBOX_CALLBACK_SECRET,)
    assert any(SANDBOX_CALLBACK_SECRET in d for d in settings.sandbox_defaults_in_use())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"callback_signing_secrets": "not-a-secret"}, "CALLBACK_SIGNING_SECRETS: entry 1"),
        ({"callback_signing_secrets": "whsec_c2hvcnQ="}, "CALLBACK_SIGNING_SECRETS: entry 1"),
        ({"callback_urls": "[1]"}, "CALLBACK_URLS"),
        ({"callback_urls": '{"a": "ftp://x"}'}, "CALLBACK_URLS"),
        ({"callback_retry_s": "5,x"}, "CALLBACK_RETRY_S"),
        ({"callback_retry_s": "5,-1"}, "CALLBACK_RETRY_S"),
        ({"callback_allowed_hosts": "a..b"}, "CALLBACK_ALLOWED_HOSTS"),
    ],
)
def test_bad_callback_settings_refuse_to_start(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        _settings(**values)
    assert "c2hvcnQ" not in str(caught.value)  # a secret is never echoed
