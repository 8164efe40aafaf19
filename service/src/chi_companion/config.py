"""Loading and validating the companion's TOML configuration.

The schema is declared once (``SCHEMA``) and drives defaults, type checks, the
unknown-key check and the environment overrides, so a new setting is one line.
Every problem is collected (not just the first) because ``check-config`` must
print all of them for the operator in one go.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ids import DEVICE_ID_RULE, is_device_id
from .retention import RULES

BACKUP_TYPES = ("database", "logs", "config")
# A car that drives daily: a week of every upload, then thinning out to a few yearly copies.
DEFAULT_RETENTION: dict[str, dict[str, int]] = {
    "database": {
        "keep_last": 7,
        "keep_daily": 14,
        "keep_weekly": 8,
        "keep_monthly": 12,
        "keep_yearly": 3,
    },
    "logs": {"keep_last": 7, "keep_daily": 14, "keep_weekly": 4, "keep_monthly": 6},
    "config": {"keep_last": 10, "keep_monthly": 12},
}
MIN_KEY_LENGTH = 16


class ConfigError(Exception):
    """Raised with every problem found; ``problems`` is a list of (dotted key, message)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {key}: {msg}" for key, msg in problems))


Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class Setting:
    kind: type | tuple[type, ...]
    default: Any
    check: Check | None = None
    env: str | None = None


def _port(v: int) -> str | None:
    return None if 1 <= v <= 65535 else "must be between 1 and 65535"


def _positive(v: int | float) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _non_negative(v: int | float) -> str | None:
    return None if v >= 0 else "must be 0 or greater"


def _host(v: str) -> str | None:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        if v != "localhost":
            return "must be an IP address (e.g. 127.0.0.1 or 0.0.0.0) or localhost"
    return None


def _absolute_or_empty(v: str) -> str | None:
    return None if v == "" or os.path.isabs(v) else "must be an absolute path"


def _absolute(v: str) -> str | None:
    return None if os.path.isabs(v) else "must be an absolute path"


def _log_level(v: str) -> str | None:
    levels = ("debug", "info", "warning", "error")
    return None if v in levels else f"must be one of {', '.join(levels)}"


def _http_url(v: str) -> str | None:
    return None if re.match(r"^https?://[^/\s]+", v) else "must be an http:// or https:// URL"


def _non_empty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


def _keep_alive(v: str) -> str | None:
    ok = re.fullmatch(r"-?\d+(\.\d+)?(ms|s|m|h)?", v)
    return None if ok else 'must be an Ollama duration such as "30m", "1h" or "-1"'


SCHEMA: dict[str, dict[str, Setting]] = {
    "server": {
        "host": Setting(str, "127.0.0.1", _host, "COMPANION_HOST"),
        "port": Setting(int, 8000, _port, "COMPANION_PORT"),
        "data_dir": Setting(str, "/srv/chi-companion", _absolute, "COMPANION_DATA_DIR"),
        "threads": Setting(int, 16, _positive),
        "max_body_bytes": Setting(int, 8 * 1024 * 1024, _positive),
        "request_timeout_seconds": Setting(int, 30, _positive),
        "graceful_timeout_seconds": Setting(int, 30, _positive),
        "log_level": Setting(str, "info", _log_level, "COMPANION_LOG_LEVEL"),
    },
    "release": {
        "record_path": Setting(str, "", _absolute_or_empty, "COMPANION_RELEASE_RECORD"),
    },
    "sync": {
        "history_max_age_days": Setting(int, 30, _positive),
        "history_max_entries": Setting(int, 100_000, _positive),
    },
    "backups": {
        "max_upload_bytes": Setting(int, 2 * 1024**3, _positive),
        "min_free_bytes": Setting(int, 1024**3, _non_negative),
    },
    "ollama": {
        "url": Setting(str, "http://127.0.0.1:11434", _http_url, "COMPANION_OLLAMA_URL"),
        "model": Setting(str, "gemma2:2b", _non_empty, "COMPANION_OLLAMA_MODEL"),
        "timeout_seconds": Setting((int, float), 600, _positive),
        "keep_alive": Setting(str, "30m", _keep_alive),
        "num_ctx": Setting(int, 8192, _positive),
        "poll_seconds": Setting((int, float), 15, _positive),
    },
    "analysis": {
        "auto": Setting(bool, True),
        "quiet_minutes": Setting((int, float), 10, _positive),
        "workers": Setting(int, 1, _positive),
        "max_queue": Setting(int, 100, _positive),
    },
    "replication": {
        "status_file": Setting(str, "", _absolute_or_empty),
        "max_age_hours": Setting((int, float), 26, _positive),
    },
    "operator": {
        "api_key": Setting(str, ""),
    },
}


@dataclass(frozen=True)
class Config:
    """The validated configuration. Sections are plain dicts of their settings."""

    source: str
    server: dict[str, Any]
    release: dict[str, Any]
    sync: dict[str, Any]
    backups: dict[str, Any]
    ollama: dict[str, Any]
    analysis: dict[str, Any]
    replication: dict[str, Any]
    operator: dict[str, Any]
    devices: dict[str, str]  # device id -> api key
    retention: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return Path(self.server["data_dir"])

    @property
    def db_path(self) -> Path:
        return self.data_dir / "companion.db"

    @property
    def replication_status_file(self) -> Path:
        configured = self.replication["status_file"]
        return Path(configured) if configured else self.data_dir / "replication" / "status.json"


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _matches(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is a subclass of int in Python; `port = true` must not pass as 1.
    if isinstance(value, bool) and bool not in kinds:
        return False
    return isinstance(value, kinds)


def _coerce_env(raw: str, kind: type | tuple[type, ...]) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if bool in kinds:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        return raw
    if int in kinds:
        try:
            return int(raw)
        except ValueError:
            pass
    if float in kinds:
        try:
            return float(raw)
        except ValueError:
            pass
    return raw


def _section(
    name: str, raw: Any, env: Mapping[str, str], problems: list[tuple[str, str]]
) -> dict[str, Any]:
    spec = SCHEMA[name]
    values: dict[str, Any] = {}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append((name, "must be a table"))
        raw = {}
    for key in raw:
        if key not in spec:
            problems.append((f"{name}.{key}", f"unknown setting (known: {', '.join(spec)})"))
    for key, setting in spec.items():
        value = raw.get(key, setting.default)
        where = f"{name}.{key}"
        if setting.env and setting.env in env:
            value = _coerce_env(env[setting.env], setting.kind)
            where = f"{name}.{key} (from ${setting.env})"
        if not _matches(value, setting.kind):
            problems.append((where, f"must be {_type_name(setting.kind)}, got {value!r}"))
            value = setting.default
        elif setting.check and (msg := setting.check(value)):
            problems.append((where, msg))
        values[key] = value
    return values


def _retention(raw: Any, problems: list[tuple[str, str]]) -> dict[str, dict[str, int]]:
    result = {t: dict(rules) for t, rules in DEFAULT_RETENTION.items()}
    if raw is None:
        return result
    if not isinstance(raw, dict):
        problems.append(("backups.retention", "must be a table"))
        return result
    for btype, rules in raw.items():
        where = f"backups.retention.{btype}"
        if btype not in BACKUP_TYPES:
            problems.append((where, f"unknown backup type (known: {', '.join(BACKUP_TYPES)})"))
            continue
        if not isinstance(rules, dict):
            problems.append((where, "must be a table"))
            continue
        # A table given for a type replaces that type's defaults entirely, so that
        # an operator can write exactly the policy they mean (an empty table keeps everything).
        chosen: dict[str, int] = {}
        for rule, count in rules.items():
            if rule not in RULES:
                problems.append((f"{where}.{rule}", f"unknown rule (known: {', '.join(RULES)})"))
            elif not _matches(count, int) or count < 0:
                problems.append((f"{where}.{rule}", f"must be an integer >= 0, got {count!r}"))
            else:
                chosen[rule] = count
        result[btype] = chosen
    return result


def _devices(raw: Any, problems: list[tuple[str, str]]) -> dict[str, str]:
    devices: dict[str, str] = {}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(("devices", "must be a table of [devices.<deviceId>] tables"))
        return devices
    for device_id, entry in raw.items():
        where = f"devices.{device_id}"
        if not is_device_id(device_id):
            problems.append((where, f"device id must be {DEVICE_ID_RULE}"))
            continue
        if not isinstance(entry, dict):
            problems.append((where, "must be a table with api_key"))
            continue
        for key in entry:
            if key != "api_key":
                problems.append((f"{where}.{key}", "unknown setting (known: api_key)"))
        key = entry.get("api_key")
        if not isinstance(key, str) or len(key) < MIN_KEY_LENGTH:
            # The key itself is never echoed: check-config output ends up in CI logs and tickets.
            problems.append(
                (f"{where}.api_key", f"must be a string of at least {MIN_KEY_LENGTH} characters")
            )
            continue
        devices[device_id] = key
    if not devices and not problems:
        problems.append(
            ("devices", "at least one [devices.<deviceId>] with an api_key is required")
        )
    return devices


def parse(data: Mapping[str, Any], source: str, env: Mapping[str, str] | None = None) -> Config:
    """Validate an already-parsed TOML document; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    problems: list[tuple[str, str]] = []
    known = set(SCHEMA) | {"devices"}
    for key in data:
        if key not in known:
            problems.append((key, f"unknown section (known: {', '.join(sorted(known))})"))
    # [backups.retention.*] is checked by _retention, so it is taken out of [backups] before
    # that section is checked (it would otherwise be reported as an unknown setting).
    backups_raw = data.get("backups")
    retention_raw = None
    if isinstance(backups_raw, dict):
        backups_raw = dict(backups_raw)
        retention_raw = backups_raw.pop("retention", None)
    raw_sections = {**data, "backups": backups_raw}
    sections = {name: _section(name, raw_sections.get(name), env, problems) for name in SCHEMA}
    retention = _retention(retention_raw, problems)
    devices = _devices(data.get("devices"), problems)
    operator_key = sections["operator"]["api_key"]
    if operator_key and len(operator_key) < MIN_KEY_LENGTH:
        problems.append(
            ("operator.api_key", f"must be empty or at least {MIN_KEY_LENGTH} characters")
        )
    all_keys = list(devices.values()) + ([operator_key] if operator_key else [])
    if len(set(all_keys)) != len(all_keys):
        problems.append(("devices", "two devices (or a device and the operator) share an api_key"))
    if problems:
        raise ConfigError(source, problems)
    return Config(source=source, devices=devices, retention=retention, **sections)


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    source = str(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(source, [("(file)", "not found")]) from None
    except PermissionError:
        raise ConfigError(source, [("(file)", "permission denied")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [("(syntax)", str(exc))]) from None
    return parse(data, source, env)


def resolve_path(cli_value: str | None, env: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    return cli_value or env.get("COMPANION_CONFIG")
