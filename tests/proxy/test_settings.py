"""Settings fail fast: a typo or a malformed value stops the start with a message naming the variable."""

from pathlib import Path

import pytest

from proxy.settings import Settings, SettingsError


def test_environment_then_flags():
    settings = Settings.from_env({"RECGUARD_WORKERS": "3", "RECGUARD_GUARD": "false", "PATH": "/bin"},
                                 workers=5, bundle=None)
    assert settings.server.workers == 5 and settings.guard.enabled is False and settings.server.bundle == Path("bundles/default")


def test_round_trip_through_the_environment():
    settings = Settings.from_env({}, model_timeout_ms=12.5, guard=False, admin_token="secret")
    assert Settings.from_env(settings.to_env()) == settings


def test_admin_token_is_not_in_the_repr():
    assert "secret" not in repr(Settings.from_env({}, admin_token="secret"))


@pytest.mark.parametrize("env, message", [
    ({"RECGUARD_WORKERZ": "3"}, "RECGUARD_WORKERZ: unknown setting"),
    ({"RECGUARD_WORKERS": "three"}, "RECGUARD_WORKERS: expected an integer, got 'three'"),
    ({"RECGUARD_WORKERS": "0"}, "RECGUARD_WORKERS: expected at least 1"),
    ({"RECGUARD_WORKER_CLASS": "gevent"}, "RECGUARD_WORKER_CLASS: expected auto or sync or gthread, got 'gevent'"),
    ({"RECGUARD_GUARD": "maybe"}, "RECGUARD_GUARD: expected a boolean"),
    ({"RECGUARD_MODEL_TIMEOUT_MS": "nan"}, "RECGUARD_MODEL_TIMEOUT_MS: expected positive"),
    ({"RECGUARD_REDIS_URL": "localhost:6379"}, "RECGUARD_REDIS_URL: expected a redis://"),
    ({"RECGUARD_BIND": "8000"}, "RECGUARD_BIND: expected HOST:PORT"),
    ({"RECGUARD_DEFAULT_K": "500"}, "RECGUARD_DEFAULT_K: expected in 1..max_k"),
])
def test_bad_values_stop_the_start(env, message):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert message in str(caught.value)


def test_redis_password_never_shown():
    from proxy.settings import redact_url

    assert redact_url("redis://:hunter2@db:6379/0") == "redis://:***@db:6379/0"
    assert redact_url("redis://user:hunter2@db/0") == "redis://user:***@db/0"
    assert redact_url("redis://db:6379/0") == "redis://db:6379/0"
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"RECGUARD_REDIS_URL": "http://:hunter2@db"})
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("env, message", [
    ({"RECGUARD_FEEDBACK_SECRET": "hunter2"}, "RECGUARD_FEEDBACK_SECRET: expected empty or at least 16 characters "
                                              "(openssl rand -hex 32), got '<7 characters>'"),
    ({"RECGUARD_FEEDBACK_SECRET": "a-new-long-secret-0001", "RECGUARD_FEEDBACK_SECRET_PREVIOUS": "a-new-long-secret-0001"},
     "RECGUARD_FEEDBACK_SECRET_PREVIOUS: expected empty, or at least 16 characters beside a new"),
    ({"RECGUARD_FEEDBACK_SECRET_PREVIOUS": "an-old-long-secret-0001"},
     "RECGUARD_FEEDBACK_SECRET_PREVIOUS: expected empty, or at least 16 characters beside a new"),
    ({"RECGUARD_FEEDBACK_ORIGINS": "shop.example"}, "RECGUARD_FEEDBACK_ORIGINS: expected '*' or origins such as"),
    ({"RECGUARD_FEEDBACK_ORIGINS": "https://shop.example/cart"}, "RECGUARD_FEEDBACK_ORIGINS: expected '*' or origins"),
])
def test_bad_feedback_settings_stop_the_start_without_showing_a_secret(env, message):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert message in str(caught.value)
    assert "hunter2" not in str(caught.value) and "long-secret" not in str(caught.value)


def test_feedback_origins_are_a_comma_separated_list():
    settings = Settings.from_env({"RECGUARD_FEEDBACK_ORIGINS": "https://shop.example, http://localhost:3000/"})
    assert settings.feedback.origin_list == ("https://shop.example", "http://localhost:3000")
