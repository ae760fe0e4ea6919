"""`blockwatch-collector secrets keygen|status|rotate` and `subscriptions rotate`, on SQLite
(the key file beside the database) and PostgreSQL (BLOCKWATCH_SECRET_KEY)."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text
from typer.testing import CliRunner, Result

from collector.cli import app
from collector.core.secrets import KEY_FILE_NAME, key_id
from collector.core.settings import CollectorSettings
from tests.collector.conftest import TEST_SECRET_KEY

runner = CliRunner()


def invoke(database_url: str, keys: str, *args: str) -> Result:
    return runner.invoke(
        app, [*args, "--database-url", database_url], env={"BLOCKWATCH_SECRET_KEY": keys}
    )


def current_key(database_url: str) -> str:
    """The key the test's collector seals with: the file's (SQLite) or the variable's."""
    if database_url.startswith("sqlite"):
        path = Path(database_url.removeprefix("sqlite:///")).parent / KEY_FILE_NAME
        return path.read_text().split()[0]
    return TEST_SECRET_KEY


def stored(database_url: str) -> list[str]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT settings, secret FROM subscriptions")).all()
    finally:
        engine.dispose()
    return [v for row in rows for v in row]


def test_keygen_prints_a_fernet_key() -> None:
    result = runner.invoke(app, ["secrets", "keygen"])
    assert result.exit_code == 0
    Fernet(result.stdout.strip())  # raises unless it is one
    assert result.stdout != runner.invoke(app, ["secrets", "keygen"]).stdout


def test_status_and_a_key_rotation(database_url: str, settings: CollectorSettings) -> None:
    given = settings.secret_key.get_secret_value()  # "" on SQLite: the key file
    assert invoke(database_url, given, "targets", "add", "alive.bar").exit_code == 0
    added = invoke(database_url, given, "subscriptions", "add", "alive.bar",
                   "--setting", "url=https://hooks.example/T0/B0/XyZ")  # fmt: skip
    assert added.exit_code == 0, added.output
    secret = added.stdout.split("signing secret: ")[1].split()[0]
    assert not any(secret in v or "XyZ" in v for v in stored(database_url))
    old = current_key(database_url)

    status = invoke(database_url, given, "secrets", "status", "--json")
    assert status.exit_code == 0, status.output
    [key] = json.loads(status.stdout)["keys"]
    assert (key["id"], key["role"], key["settings"], key["secret"]) == (
        key_id(old),
        "sealing",
        1,
        1,
    )
    assert old not in status.stdout and secret not in status.stdout

    new = runner.invoke(app, ["secrets", "keygen"]).stdout.strip()
    rotated = invoke(database_url, f"{new},{old}", "secrets", "rotate")
    assert rotated.exit_code == 0, rotated.output
    assert key_id(new) in rotated.stdout
    after = json.loads(invoke(database_url, new, "secrets", "status", "--json").stdout)
    assert [(k["id"], k["settings"], k["secret"]) for k in after["keys"]] == [(key_id(new), 1, 1)]
    listed = invoke(database_url, new, "subscriptions", "list", "--json")
    assert json.loads(listed.stdout)[0]["settings"] == {"url": "https://hooks.example/T0/B0/XyZ"}

    # The retired key alone opens nothing any more: status says so, and fails.
    stale = invoke(database_url, old, "secrets", "status")
    assert stale.exit_code == 1 and "unknown" in stale.stdout


def test_rotate_fails_when_no_key_opens_a_value(
    database_url: str, settings: CollectorSettings
) -> None:
    given = settings.secret_key.get_secret_value()
    invoke(database_url, given, "targets", "add", "alive.bar")
    added = invoke(database_url, given, "subscriptions", "add", "alive.bar",
                   "--setting", "url=https://hooks.example/a")  # fmt: skip
    assert added.exit_code == 0, added.output
    other = runner.invoke(app, ["secrets", "keygen"]).stdout.strip()
    result = invoke(database_url, other, "secrets", "rotate")
    assert result.exit_code == 1 and "lacks" in result.output


def test_a_malformed_key_is_refused_clearly(database_url: str) -> None:
    result = invoke(database_url, "hunter2", "secrets", "rotate")
    assert result.exit_code == 1
    assert "not a Fernet key" in result.output and "hunter2" not in result.output


def test_subscriptions_rotate_prints_the_new_secret_once_and_keeps_the_old(
    database_url: str, settings: CollectorSettings
) -> None:
    given = settings.secret_key.get_secret_value()
    invoke(database_url, given, "targets", "add", "alive.bar")
    added = invoke(database_url, given, "subscriptions", "add", "alive.bar",
                   "--setting", "url=https://hooks.example/a")  # fmt: skip
    sub_id = added.stdout.split()[1]
    result = invoke(database_url, given, "subscriptions", "rotate", sub_id)
    assert result.exit_code == 0, result.output
    assert "new signing secret: whsec_" in result.stdout and "24 hours" in result.stdout
    status = json.loads(invoke(database_url, given, "secrets", "status", "--json").stdout)
    assert status["keys"][0]["previous_secret"] == 1
    listed = invoke(database_url, given, "subscriptions", "list", "--json").stdout
    assert "whsec_" not in listed
