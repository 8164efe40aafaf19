"""The configuration file and the chi-companion command line."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from chi_companion.core.config import ConfigError, load

GOOD = """
[server]
host = "0.0.0.0"
port = 8000
data_dir = "/srv/chi-companion"

[devices.chi-eclipse-01]
api_key = "0123456789abcdef0123"
"""


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chi_companion", *args],
        capture_output=True,
        check=False,
        text=True,
        env=env,
        timeout=60,
    )


def test_minimal_config_gets_documented_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD)
    config = load(path, env={})
    assert config.server.port == 8000
    # Only the key's SHA-256 is kept; a key in clear is accepted with a warning.
    digest = hashlib.sha256(b"0123456789abcdef0123").hexdigest()
    assert config.devices == {"chi-eclipse-01": (digest,)}
    assert config.warnings and digest in config.warnings[0]
    assert config.ollama.model == "gemma2:2b"
    assert config.db_path == Path("/srv/chi-companion/companion.db")
    assert config.retention["database"]["keep_daily"] == 14


def test_environment_overrides_single_values(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD)
    config = load(path, env={"COMPANION_PORT": "8123", "COMPANION_DATA_DIR": "/data"})
    assert config.server.port == 8123
    assert config.server.data_dir == "/data"
    with pytest.raises(ConfigError) as err:
        load(path, env={"COMPANION_PORT": "eighty"})
    assert err.value.problems[0][0] == "server.port (from $COMPANION_PORT)"


def test_check_config_lists_every_problem_without_echoing_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("""
[server]
port = 70000
hots = "127.0.0.1"
data_dir = "relative/path"

[ollama]
url = "localhost:11434"

[backups.retention.database]
keep_daily = -1
keep_fortnightly = 2

[devices."bad id!"]
api_key = "0123456789abcdef0123"

[devices.chi-eclipse-01]
api_key = "short-secret"

[surprise]
""")
    result = cli("check-config", "--config", str(path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    keys = [line.split(": ")[1] for line in lines]
    assert keys == sorted(keys, key=keys.index)  # stable order, one line each
    for expected in (
        "server.port",
        "server.hots",
        "server.data_dir",
        "ollama.url",
        "backups.retention.database.keep_daily",
        "backups.retention.database.keep_fortnightly",
        "devices.bad id!",
        "devices.chi-eclipse-01.api_key",
        "surprise",
    ):
        assert expected in keys, (expected, lines)
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert "short-secret" not in result.stderr + result.stdout


def test_check_config_ok_and_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD)
    ok = cli("check-config", "--config", str(path))
    assert ok.returncode == 0 and ok.stdout.startswith(f"config OK: {path}")
    path.write_text("[server\nport=1")
    bad = cli("check-config", "--config", str(path))
    assert bad.returncode == 1 and "(syntax)" in bad.stderr
    missing = cli("check-config", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD)
    import os

    result = cli("check-config", env=dict(os.environ, COMPANION_CONFIG=str(path)))
    assert result.returncode == 0, result.stderr


def test_gen_key_is_fresh_and_long() -> None:
    first, second = cli("gen-key").stdout.strip(), cli("gen-key").stdout.strip()
    assert first != second
    assert len(first) == 43 and first.replace("-", "").replace("_", "").isalnum()


def test_init_config_writes_a_valid_private_config(tmp_path: Path) -> None:
    out = tmp_path / "dev" / "companion.toml"
    result = cli("init-config", "--out", str(out), "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 0
    key = result.stdout.strip().splitlines()[-1]
    assert key in out.read_text()
    assert out.stat().st_mode & 0o777 == 0o600
    assert cli("check-config", "--config", str(out)).returncode == 0
    # A second run keeps the existing file (and its key).
    cli("init-config", "--out", str(out), "--data-dir", str(tmp_path / "data"))
    assert key in out.read_text()


@pytest.mark.parametrize("value", ['"30m"', '"1h30m"', '"0"', '"-1s"', "-1", "600", "90.5"])
def test_keep_alive_takes_what_ollama_accepts(tmp_path: Path, value: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD + f"\n[ollama]\nkeep_alive = {value}\n")
    load(path, env={})


@pytest.mark.parametrize("value", ['"600"', '"-1"', '"forever"', '"30 m"', "true"])
def test_keep_alive_refuses_what_ollama_refuses(tmp_path: Path, value: str) -> None:
    """Ollama parses a keep_alive string as a Go duration: "600" has no unit and every
    analysis would fail with 400. The message says what to write instead."""
    path = tmp_path / "c.toml"
    path.write_text(GOOD + f"\n[ollama]\nkeep_alive = {value}\n")
    with pytest.raises(ConfigError) as err:
        load(path, env={})
    ((key, message),) = err.value.problems
    assert key == "ollama.keep_alive"
    if value != "true":
        assert "-1 to keep the model loaded" in message and '"30m"' in message
    if value in ('"600"', '"-1"'):
        assert "has no unit" in message
