"""Loading and validating the companion's TOML configuration.

Each section is a frozen dataclass whose fields declare a setting once: type (the
annotation), default, description, check and environment override. From them come the
loader's type checks, the unknown-key check, the environment overrides, the typed ``Config``
the code reads (``config.server.port``) and docs/configuration.md (``core.config_doc``).
Every problem is collected (not just the first) because ``check-config`` must
print all of them for the operator in one go.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

from .ids import DEVICE_ID_RULE, is_device_id

BACKUP_TYPES = ("database", "logs", "config")
# The retention rules [backups.retention.<type>] may set (restic's --keep-* options); the
# backups package gives each its meaning.
RETENTION_RULES: tuple[str, ...] = (
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
)
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
SHA256_HEX_RE = re.compile(r"[0-9A-Fa-f]{64}")


class ConfigError(Exception):
    """Raised with every problem found; ``problems`` is a list of (dotted key, message)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {key}: {msg}" for key, msg in problems))


Check = Callable[[Any], str | None]


def setting(default: Any, desc: str, check: Check | None = None, env: str | None = None) -> Any:
    """A config field: its default, what it means (for docs/configuration.md), its check
    and the environment variable that overrides it. The field's type is its annotation."""
    return field(default=default, metadata={"desc": desc, "check": check, "env": env})


@dataclass(frozen=True)
class Setting:
    """One setting as the loader checks it (derived from a section's field)."""

    kind: type | tuple[type, ...]
    default: Any
    check: Check | None = None
    env: str | None = None
    desc: str = ""


def _port(v: int) -> str | None:
    return None if 1 <= v <= 65535 else "must be between 1 and 65535"


def _positive(v: int | float) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _share(v: int | float) -> str | None:
    return None if 0 < v <= 1 else "must be more than 0 and at most 1"


def _sha256_or_empty(v: str) -> str | None:
    return None if not v or SHA256_HEX_RE.fullmatch(v) else "must be 64 hexadecimal digits"


def key_digest(key: str) -> str:
    """What the config stores and the key ring compares: the key's SHA-256 in hex. The keys
    are 256 random bits, so a fast hash is enough (no dictionary to guess from)."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


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


# A Go duration as Ollama parses a keep_alive string (time.ParseDuration): one or more
# number+unit pairs, or a bare "0". A number without a unit is refused by Ollama with
# 400 'time: missing unit in duration', so it is refused here before it fails every analysis.
_GO_DURATION_RE = re.compile(r"[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+|[-+]?0")


def _keep_alive(v: str | int | float) -> str | None:
    if isinstance(v, int | float):
        return None if math.isfinite(v) else "must be a finite number of seconds"
    if _GO_DURATION_RE.fullmatch(v):
        return None
    return (
        "must be a number of seconds (e.g. 1800, or -1 to keep the model loaded) or a "
        'duration with a unit such as "30m" or "1h"'
        + (f"; {v!r} has no unit" if re.fullmatch(r"[-+]?\d+(\.\d+)?", v) else "")
    )


@dataclass(frozen=True)
class ServerSection:
    """[server]: the HTTP server."""

    host: str = setting(
        "127.0.0.1",
        "Address to listen on: 127.0.0.1 for this host only, 0.0.0.0 for the LAN (the Pi).",
        _host,
        "COMPANION_HOST",
    )
    port: int = setting(8000, "TCP port; the Pi's client expects 8000.", _port, "COMPANION_PORT")
    data_dir: str = setting(
        "/srv/chi-companion",
        "Where the database, backups, analysis results and logs live (absolute path).",
        _absolute,
        "COMPANION_DATA_DIR",
    )
    threads: int = setting(
        16,
        "Request threads of the one worker process (uploads and long polls hold one).",
        _positive,
    )
    max_body_bytes: int = setting(
        8 * 1024 * 1024,
        "Largest JSON body (sync, analyze) in bytes; a 500-row realtime_data batch is ~88 KB.",
        _positive,
    )
    request_timeout_seconds: int = setting(
        30, "A client that sends nothing for this long is answered 408 and disconnected.", _positive
    )
    # Slow and greedy clients (issue 15 item 2; core/slow_clients.py).
    header_timeout_seconds: int | float = setting(
        10,
        "A request's line and headers must arrive within this many seconds of connecting, "
        "or the connection is answered 408 and closed. Headers are read without holding a "
        "request thread, so idle or dripping connections cost none.",
        _positive,
    )
    min_body_bytes_per_second: int | float = setting(
        500,
        "After body_grace_seconds of waiting for it, a request body must keep arriving at "
        "this average rate (time the server spends working is not counted), or the request "
        "is answered 408 and nothing of it is kept; 0: no minimum rate.",
        _non_negative,
    )
    body_grace_seconds: int | float = setting(
        10,
        "Waiting for a body this long is free before min_body_bytes_per_second applies.",
        _non_negative,
    )
    max_connections_per_source: int = setting(
        8,
        "Connections one client address may have open at once; more are answered 429 "
        "(Retry-After: 1) and closed. The Pi uses one at a time. Raise it, or 0 for no "
        "limit, when clients reach the service through a proxy on one address.",
        _non_negative,
    )
    graceful_timeout_seconds: int = setting(
        30, "On SIGTERM, how long requests in flight may take to finish.", _positive
    )
    log_level: str = setting(
        "info", "debug, info, warning or error.", _log_level, "COMPANION_LOG_LEVEL"
    )


@dataclass(frozen=True)
class ReleaseSection:
    """[release]: the release record the Pi's self-update check reads."""

    record_path: str = setting(
        "",
        "JSON file with the published release (re-read when it changes); empty: none, and "
        "GET /release/current answers 503.",
        _absolute_or_empty,
        "COMPANION_RELEASE_RECORD",
    )


@dataclass(frozen=True)
class SyncSection:
    """[sync]: the history of sync requests shown by /sync/status."""

    history_max_age_days: int = setting(
        30, "Sync history entries older than this many days are pruned.", _positive
    )
    history_max_entries: int = setting(
        100_000, "At most this many sync history entries are kept.", _positive
    )


@dataclass(frozen=True)
class BackupsSection:
    """[backups]: uploads of the Pi's database, logs and config. Retention per type is set
    in [backups.retention.<type>] (see below)."""

    max_upload_bytes: int = setting(
        2 * 1024**3, "Largest backup file in bytes; a bigger upload is refused with 413.", _positive
    )
    min_free_bytes: int = setting(
        1024**3,
        "Uploads that would leave less free space than this are refused with 507; /health "
        "reports degraded below it.",
        _non_negative,
    )
    keep_within_days: int | float = setting(
        7,
        "Retention (`chi-companion backups prune`) never removes a backup received within this "
        "many days of the newest backup of its device and type (restic's --keep-within), "
        "whatever the keep_* rules say: a stolen device key cannot flush recent good backups "
        "with junk uploads. Uploads never remove anything.",
        _non_negative,
    )
    uploads_per_hour: int | float = setting(
        12,
        "Backup uploads each device may make per hour on average; beyond its burst an upload "
        "is refused with 429 and Retry-After.",
        _positive,
    )
    upload_burst: int = setting(
        10, "Uploads a device may make at once before uploads_per_hour applies.", _positive
    )


@dataclass(frozen=True)
class QuotasSection:
    """[quotas]: how much each device may store. Checked before anything is written: over
    quota, a sync or upload is refused with 507 and a body naming the quota, the usage and what
    to do. Sized for a car logger on a 2 TB array: a Pi logging 2 hours a day syncs about
    5 GB of rows a year. 0 turns a quota off."""

    synced_bytes_per_device: int = setting(
        50 * 1024**3,
        "Bytes of synced rows (the row documents as stored) each device may keep; a sync that "
        "would add more is refused with 507. The database file is larger by its indexes (about "
        "1.5x). 0: no quota.",
        _non_negative,
    )
    backup_bytes_per_device: int = setting(
        100 * 1024**3,
        "Bytes of backups each device may keep, counting uploads in progress; an upload that "
        "would pass it is refused with 507 (`chi-companion backups prune` or the operator's "
        "DELETE frees room). 0: no quota.",
        _non_negative,
    )


@dataclass(frozen=True)
class OllamaSection:
    """[ollama]: the Ollama server that runs the analysis model."""

    url: str = setting(
        "http://127.0.0.1:11434", "Ollama's base URL.", _http_url, "COMPANION_OLLAMA_URL"
    )
    model: str = setting(
        "gemma2:2b",
        "Model to analyse with (it must be pulled; names compare case-insensitively).",
        _non_empty,
        "COMPANION_OLLAMA_MODEL",
    )
    timeout_seconds: int | float = setting(
        600, "Longest wait for one complete answer (a CPU-only model is slow).", _positive
    )
    keep_alive: str | int | float = setting(
        "30m",
        "How long Ollama keeps the model loaded after a request: a number of seconds (-1: "
        'always, 0: unload at once) or a duration with a unit ("30m", "1h"). A string '
        'without a unit ("600") is refused: Ollama answers it with 400.',
        _keep_alive,
    )
    num_ctx: int = setting(
        8192, "Context window in tokens asked of Ollama (gemma2:2b's full context).", _positive
    )
    poll_seconds: int | float = setting(
        15, "How often the monitor checks Ollama's version, models and /api/ps.", _positive
    )


@dataclass(frozen=True)
class AnalysisSection:
    """[analysis]: the analysis queue."""

    auto: bool = setting(True, "Analyse every drive automatically once it has gone quiet.")
    quiet_minutes: int | float = setting(
        10, "Minutes without new rows before a drive is analysed automatically.", _positive
    )
    workers: int = setting(
        1, "Analyses run at once (1: Ollama is never asked for two at a time).", _positive
    )
    max_queue: int = setting(
        100, "Queued and running analyses at most; past it POST /analyze answers 429.", _positive
    )
    device_queue_share: int | float = setting(
        0.5,
        "Share of analysis.max_queue one device may hold (at least 1 job): past it that "
        "device's POST /analyze answers 429, so one key cannot fill the queue for all.",
        _share,
    )
    max_inline_body_bytes: int = setting(
        1024**2,
        "Largest POST /analyze body with inline rows (their digest is built in the request); "
        "bigger is refused with 413. Sync the rows and analyse the drive instead.",
        _positive,
    )


@dataclass(frozen=True)
class ReplicationSection:
    """[replication]: how /health judges the NAS replication."""

    status_file: str = setting(
        "",
        "Status file the nas_replication wrapper writes; empty: replication/status.json "
        "in server.data_dir.",
        _absolute_or_empty,
    )
    max_age_hours: int | float = setting(
        26, "/health reports degraded when the last successful run is older.", _positive
    )


@dataclass(frozen=True)
class OperatorSection:
    """[operator]: the operator's key (reads and manages every device's data)."""

    api_key: str = setting(
        "",
        "Operator API key in clear (at least 16 characters); accepted with a warning: store "
        "api_key_sha256 instead. Empty: none.",
    )
    api_key_sha256: str = setting(
        "",
        "SHA-256 (64 hex digits) of the operator key, as `chi-companion gen-key` prints it; "
        "empty: none.",
        _sha256_or_empty,
    )


def _networks(v: str) -> str | None:
    for part in v.split(","):
        if not part.strip():
            continue
        try:
            ipaddress.ip_network(part.strip(), strict=False)
        except ValueError:
            return f"{part.strip()!r} is not an IP address or network (like 10.0.0.0/24)"
    return None


@dataclass(frozen=True)
class MetricsSection:
    """[metrics]: who may read GET /metrics (the Prometheus text format)."""

    allowed_addresses: str = setting(
        "",
        "Comma-separated client addresses or networks (CIDR) that may read /metrics; others get "
        "403. Empty: every client.",
        _networks,
    )

    def allows(self, address: str) -> bool:
        networks = [p.strip() for p in self.allowed_addresses.split(",") if p.strip()]
        if not networks:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d
        return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


@dataclass(frozen=True)
class DbBackupSection:
    """[db_backup]: `chi-companion db backup`, the companion's own database copied (online,
    checked, gzipped) into db-backups/ in server.data_dir; these rules thin the copies out
    after each run, as restic's --keep-* options do (all 0: keep every copy)."""

    keep_last: int = setting(7, "Keep the newest this many copies.", _non_negative)
    keep_daily: int = setting(14, "Keep the newest copy of each of this many days.", _non_negative)
    keep_weekly: int = setting(
        8, "Keep the newest copy of each of this many ISO weeks.", _non_negative
    )
    keep_monthly: int = setting(
        12, "Keep the newest copy of each of this many months.", _non_negative
    )

    @property
    def policy(self) -> dict[str, int]:
        return {
            "keep_last": self.keep_last,
            "keep_daily": self.keep_daily,
            "keep_weekly": self.keep_weekly,
            "keep_monthly": self.keep_monthly,
        }


SECTIONS: dict[str, type] = {
    "server": ServerSection,
    "release": ReleaseSection,
    "sync": SyncSection,
    "backups": BackupsSection,
    "quotas": QuotasSection,
    "ollama": OllamaSection,
    "analysis": AnalysisSection,
    "replication": ReplicationSection,
    "operator": OperatorSection,
    "metrics": MetricsSection,
    "db_backup": DbBackupSection,
}


def _kinds(hint: Any) -> tuple[type, ...]:
    return tuple(get_args(hint)) if get_args(hint) else (hint,)


def settings_of(section: type) -> dict[str, Setting]:
    """The section's settings as the loader checks them, derived from its dataclass."""
    hints = get_type_hints(section)
    return {
        f.name: Setting(
            _kinds(hints[f.name]),
            f.default,
            f.metadata["check"],
            f.metadata["env"],
            f.metadata["desc"],
        )
        for f in fields(section)
    }


SCHEMA: dict[str, dict[str, Setting]] = {name: settings_of(cls) for name, cls in SECTIONS.items()}


@dataclass(frozen=True)
class Config:
    """The validated configuration: one frozen, typed section per TOML table."""

    source: str
    server: ServerSection
    release: ReleaseSection
    sync: SyncSection
    backups: BackupsSection
    quotas: QuotasSection
    ollama: OllamaSection
    analysis: AnalysisSection
    replication: ReplicationSection
    operator: OperatorSection
    metrics: MetricsSection
    db_backup: DbBackupSection
    # device id -> SHA-256 hex digests of its keys (two during a rotation)
    devices: dict[str, tuple[str, ...]]
    retention: dict[str, dict[str, int]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # accepted but worth fixing (keys in clear)

    @property
    def operator_digests(self) -> tuple[str, ...]:
        digests = []
        if self.operator.api_key:
            digests.append(key_digest(self.operator.api_key))
        if self.operator.api_key_sha256:
            digests.append(self.operator.api_key_sha256.lower())
        return tuple(digests)

    @property
    def data_dir(self) -> Path:
        return Path(self.server.data_dir)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "companion.db"

    @property
    def replication_status_file(self) -> Path:
        configured = self.replication.status_file
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
            if rule not in RETENTION_RULES:
                problems.append(
                    (f"{where}.{rule}", f"unknown rule (known: {', '.join(RETENTION_RULES)})")
                )
            elif not _matches(count, int) or count < 0:
                problems.append((f"{where}.{rule}", f"must be an integer >= 0, got {count!r}"))
            else:
                chosen[rule] = count
        result[btype] = chosen
    return result


MAX_KEYS_PER_DEVICE = 2  # the old and the new key during a rotation


def _devices(
    raw: Any, problems: list[tuple[str, str]], warnings: list[str]
) -> dict[str, tuple[str, ...]]:
    devices: dict[str, tuple[str, ...]] = {}
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
            problems.append((where, "must be a table with api_key_sha256 (or api_key)"))
            continue
        for key in entry:
            if key not in ("api_key", "api_key_sha256"):
                problems.append(
                    (f"{where}.{key}", "unknown setting (known: api_key_sha256, api_key)")
                )
        digests: list[str] = []
        if "api_key" in entry:
            key = entry["api_key"]
            if not isinstance(key, str) or len(key) < MIN_KEY_LENGTH:
                # The key itself is never echoed: check-config output ends up in CI logs.
                problems.append(
                    (
                        f"{where}.api_key",
                        f"must be a string of at least {MIN_KEY_LENGTH} characters",
                    )
                )
                continue
            digests.append(key_digest(key))
            warnings.append(
                f"{where}.api_key: the key is stored in clear; replace it by "
                f'api_key_sha256 = "{digests[-1]}"'
            )
        hashed = entry.get("api_key_sha256")
        if hashed is not None:
            values = [hashed] if isinstance(hashed, str) else hashed
            if not isinstance(values, list) or not all(
                isinstance(v, str) and SHA256_HEX_RE.fullmatch(v) for v in values
            ):
                problems.append(
                    (
                        f"{where}.api_key_sha256",
                        "must be 64 hexadecimal digits, or a list of them (rotation)",
                    )
                )
                continue
            digests.extend(v.lower() for v in values)
        if not digests:
            problems.append((where, "needs api_key_sha256 (see chi-companion gen-key)"))
            continue
        if len(digests) > MAX_KEYS_PER_DEVICE:
            problems.append(
                (where, f"at most {MAX_KEYS_PER_DEVICE} keys (the old and the new one)")
            )
            continue
        devices[device_id] = tuple(digests)
    if not devices and not problems:
        problems.append(
            ("devices", "at least one [devices.<deviceId>] with an api_key_sha256 is required")
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
    warnings: list[str] = []
    devices = _devices(data.get("devices"), problems, warnings)
    operator_key = sections["operator"]["api_key"]
    operator_digests: list[str] = []
    if operator_key and len(operator_key) < MIN_KEY_LENGTH:
        problems.append(
            ("operator.api_key", f"must be empty or at least {MIN_KEY_LENGTH} characters")
        )
    elif operator_key:
        operator_digests.append(key_digest(operator_key))
        warnings.append(
            "operator.api_key: the key is stored in clear; replace it by "
            f'api_key_sha256 = "{operator_digests[-1]}"'
        )
    if sections["operator"]["api_key_sha256"]:
        operator_digests.append(str(sections["operator"]["api_key_sha256"]).lower())
    all_keys = [d for ds in devices.values() for d in ds] + operator_digests
    if len(set(all_keys)) != len(all_keys):
        problems.append(("devices", "two devices (or a device and the operator) share an api_key"))
    if problems:
        raise ConfigError(source, problems)
    typed = {name: SECTIONS[name](**values) for name, values in sections.items()}
    return Config(
        source=source,
        devices=devices,
        retention=retention,
        warnings=tuple(warnings),
        **typed,
    )


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    source = str(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(source, [("(file)", "not found")]) from None
    except PermissionError:
        raise ConfigError(source, [("(file)", "permission denied")]) from None
    except IsADirectoryError:
        raise ConfigError(source, [("(file)", "is a directory, not a config file")]) from None
    except OSError as exc:
        raise ConfigError(source, [("(file)", f"cannot be read: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        # tomllib decodes the bytes itself and lets this through, not as a TOMLDecodeError.
        raise ConfigError(source, [("(file)", f"is not UTF-8 text (byte {exc.start})")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [("(syntax)", str(exc))]) from None
    return parse(data, source, env)


def resolve_path(cli_value: str | None, env: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    return cli_value or env.get("COMPANION_CONFIG")
