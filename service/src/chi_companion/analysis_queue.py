"""The persistent analysis queue, its worker threads, the Ollama monitor and the
automatic analysis of quiet drives.

Why a queue: the GPU runs one generation at a time and a generation takes from
seconds (GPU) to many minutes (CPU fallback), so requests are accepted at once
(202) and worked through by ``analysis.workers`` threads (one by default, so
Ollama is never asked for two analyses at once).

Why SQLite: a restart (deploy, power cut) must lose nothing. Jobs are rows in
``analyses``; a worker claims one with a single UPDATE, and on start-up any row
left ``running`` by the previous process is put back to ``queued``.

Statuses:
    queued              waiting for a worker
    running             a worker is building the digest or waiting for Ollama's answer
    waiting_for_ollama  Ollama unreachable or answering 5xx: retried with backoff, and at
                        once when the monitor sees Ollama come back
    waiting_for_model   Ollama says the model is not pulled: retried when the model appears
                        in /api/tags (and every MODEL_RECHECK_SECONDS in any case)
    done                result validated and written to ai_results/<deviceId>/<id>.json
    failed              output invalid twice, timed out twice, or refused by Ollama (4xx)
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .analysis_prompt import PromptError, load_template, render_messages
from .analysis_result import RESULT_SCHEMA, RESULT_SCHEMA_VERSION, InvalidOutput, parse_result
from .clock import iso_z, now_iso, parse_iso_z
from .db import transaction
from .drive_digest import build_drive_digest
from .ollama_client import (
    ModelMissing,
    OllamaClient,
    OllamaError,
    OllamaRequestError,
    OllamaTimeout,
    OllamaUnavailable,
)

if TYPE_CHECKING:
    from .context import Companion

log = logging.getLogger(__name__)

QUEUED = "queued"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
WAITING_OLLAMA = "waiting_for_ollama"
WAITING_MODEL = "waiting_for_model"
STATUSES = (QUEUED, RUNNING, DONE, FAILED, WAITING_OLLAMA, WAITING_MODEL)
PENDING = (QUEUED, WAITING_OLLAMA, WAITING_MODEL)
ACTIVE = (*PENDING, RUNNING)
TERMINAL = (DONE, FAILED)

MAX_INVALID_OUTPUTS = 2  # the first invalid answer is retried once
MAX_TIMEOUTS = 2
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 300.0
MODEL_RECHECK_SECONDS = 300.0
DB_RETRY_SECONDS = 30.0
IDLE_POLL_SECONDS = 1.0  # picks up jobs queued by another process (the CLI's `retry`)
MAX_RAW_OUTPUT_CHARS = 65_536
# How long a stopping worker may finish the analysis in hand: long enough for a
# GPU answer to land (and not be redone after the restart), short enough for
# gunicorn's graceful timeout.
STOP_GRACE_SECONDS = 10.0
# Automatic analysis never fills more than this share of the queue, so a request
# from the Pi still finds room.
AUTO_QUEUE_SHARE = 0.5

_IN = ", ".join(f"'{s}'" for s in PENDING)
_STATUS_IN = ", ".join(f"'{s}'" for s in STATUSES)
_RETRYABLE_IN = ", ".join(f"'{s}'" for s in (FAILED, WAITING_OLLAMA, WAITING_MODEL))
_ACTIVE_IN = ", ".join(f"'{s}'" for s in ACTIVE)

SCHEMA = [
    f"""CREATE TABLE IF NOT EXISTS analyses (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id        TEXT    NOT NULL,
        drive_id         INTEGER,
        source           TEXT    NOT NULL CHECK (source IN ('drive', 'inline')),
        source_key       TEXT    NOT NULL,
        trigger          TEXT    NOT NULL,
        focus_json       TEXT    NOT NULL DEFAULT '[]',
        status           TEXT    NOT NULL CHECK (status IN ({_STATUS_IN})),
        created_at       TEXT    NOT NULL,
        updated_at       TEXT    NOT NULL,
        started_at       TEXT,
        finished_at      TEXT,
        next_attempt_at  REAL    NOT NULL DEFAULT 0,
        attempts         INTEGER NOT NULL DEFAULT 0,
        invalid_outputs  INTEGER NOT NULL DEFAULT 0,
        timeouts         INTEGER NOT NULL DEFAULT 0,
        transient_errors INTEGER NOT NULL DEFAULT 0,
        error            TEXT,
        raw_output       TEXT,
        digest_json      TEXT,
        model            TEXT,
        model_digest     TEXT,
        ollama_version   TEXT,
        prompt_version   TEXT,
        durations_json   TEXT,
        result_path      TEXT,
        summary          TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS analyses_by_source ON analyses (device_id, source_key)",
    "CREATE INDEX IF NOT EXISTS analyses_by_status ON analyses (status, next_attempt_at)",
]


@dataclass
class Analysis:
    """One row of ``analyses``."""

    id: int
    device_id: str
    drive_id: int | None
    source: str
    source_key: str
    trigger: str
    focus: list[str]
    status: str
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    next_attempt_at: float
    attempts: int
    invalid_outputs: int
    timeouts: int
    transient_errors: int
    error: str | None
    raw_output: str | None
    digest_json: str | None
    model: str | None
    model_digest: str | None
    ollama_version: str | None
    prompt_version: str | None
    durations_json: str | None
    result_path: str | None
    summary: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Analysis:
        values = dict(row)
        values["focus"] = json.loads(values.pop("focus_json") or "[]")
        return cls(**values)

    def as_json(self, data_dir: Path | None = None, full: bool = True) -> dict[str, Any]:
        """The API's view. ``full`` adds the result (read from its file, the
        record of truth), durations and the raw output of a failed job."""
        out: dict[str, Any] = {
            "id": self.id,
            "deviceId": self.device_id,
            "driveId": self.drive_id,
            "source": self.source,
            "trigger": self.trigger,
            "status": self.status,
            "focus": self.focus,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "attempts": self.attempts,
            "model": self.model,
            "summary": self.summary,
            "error": self.error,
        }
        if self.status in PENDING and self.next_attempt_at > time.time():
            out["nextAttemptAt"] = iso_z(datetime.fromtimestamp(self.next_attempt_at, UTC))
        if not full:
            return out
        out.update(
            modelDigest=self.model_digest,
            ollamaVersion=self.ollama_version,
            promptVersion=self.prompt_version,
            durations=json.loads(self.durations_json) if self.durations_json else None,
            resultFile=self.result_path,
            result=None,
        )
        if self.status == DONE and self.result_path and data_dir is not None:
            try:
                with open(data_dir / self.result_path, encoding="utf-8") as fh:
                    out["result"] = json.load(fh)["result"]
            except (OSError, ValueError, KeyError) as exc:
                out["resultError"] = f"result file unreadable: {exc.__class__.__name__}"
        if self.status == FAILED and self.raw_output is not None:
            out["rawOutput"] = self.raw_output
        return out


def _row_factory(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> sqlite3.Row:
    return sqlite3.Row(cursor, row)


@contextmanager
def _rows(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Temporarily give a shared per-thread connection a Row factory."""
    previous = conn.row_factory
    conn.row_factory = _row_factory
    try:
        yield conn
    finally:
        conn.row_factory = previous


def backoff_seconds(failures: int) -> float:
    return float(min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, failures - 1)))


def write_atomic(path: Path, payload: bytes) -> None:
    """Write a file so that readers (and the NAS replication) only ever see the
    old version or the complete new one, and the new one survives a power cut."""
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class AnalysisStore:
    """The ``analyses`` table: every read and state change of a job."""

    def __init__(self, ctx: Companion) -> None:
        self.ctx = ctx

    def conn(self) -> sqlite3.Connection:
        return self.ctx.db.conn()

    def get(self, analysis_id: int) -> Analysis | None:
        with _rows(self.conn()) as conn:
            row = conn.execute("SELECT * FROM analyses WHERE id = ?", (analysis_id,)).fetchone()
        return Analysis.from_row(row) if row else None

    def list(
        self,
        device_id: str | None = None,
        drive_id: int | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[Analysis]:
        clauses, params = [], []
        for column, value in (("device_id", device_id), ("drive_id", drive_id), ("status", status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with _rows(self.conn()) as conn:
            rows = conn.execute(
                f"SELECT * FROM analyses {where} ORDER BY id DESC LIMIT ?", (*params, limit)
            ).fetchall()
        return [Analysis.from_row(r) for r in rows]

    def latest_for(
        self, conn: sqlite3.Connection, device_id: str, source_key: str
    ) -> Analysis | None:
        with _rows(conn):
            row = conn.execute(
                """SELECT * FROM analyses WHERE device_id = ? AND source_key = ?
                   ORDER BY id DESC LIMIT 1""",
                (device_id, source_key),
            ).fetchone()
        return Analysis.from_row(row) if row else None

    def depth(self, conn: sqlite3.Connection | None = None) -> int:
        conn = conn or self.conn()
        return int(
            conn.execute(
                f"SELECT count(*) FROM analyses WHERE status IN ({_ACTIVE_IN})"
            ).fetchone()[0]
        )

    def counts(self) -> dict[str, int]:
        rows = self.conn().execute(
            f"SELECT status, count(*) FROM analyses WHERE status IN ({_ACTIVE_IN}) GROUP BY status"
        )
        counts = dict.fromkeys(ACTIVE, 0)
        counts.update({status: n for status, n in rows})
        return counts

    def last_finished_at(self) -> str | None:
        row = (
            self.conn()
            .execute("SELECT max(finished_at) FROM analyses WHERE status = ?", (DONE,))
            .fetchone()
        )
        return row[0] if row else None

    def insert(
        self,
        conn: sqlite3.Connection,
        *,
        device_id: str,
        drive_id: int | None,
        source: str,
        source_key: str,
        trigger: str,
        focus: list[str],
        model: str,
        digest: dict[str, Any] | None = None,
    ) -> Analysis:
        now = now_iso()
        cur = conn.execute(
            """INSERT INTO analyses (device_id, drive_id, source, source_key, trigger,
                 focus_json, status, created_at, updated_at, model, digest_json)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                device_id,
                drive_id,
                source,
                source_key,
                trigger,
                json.dumps(focus),
                QUEUED,
                now,
                now,
                model,
                json.dumps(digest, separators=(",", ":")) if digest is not None else None,
            ),
        )
        with _rows(conn):
            row = conn.execute("SELECT * FROM analyses WHERE id = ?", (cur.lastrowid,)).fetchone()
        return Analysis.from_row(row)

    def claim(self) -> Analysis | None:
        """Atomically take the oldest job that is due."""
        conn = self.conn()
        now = now_iso()
        with transaction(conn), _rows(conn):
            row = conn.execute(
                f"""UPDATE analyses SET status = ?, started_at = ?, updated_at = ?,
                      attempts = attempts + 1
                    WHERE id = (SELECT id FROM analyses
                                WHERE status IN ({_IN}) AND next_attempt_at <= ?
                                ORDER BY id LIMIT 1)
                    RETURNING *""",
                (RUNNING, now, now, time.time()),
            ).fetchall()  # drained before COMMIT: an unfinished statement would block it
        return Analysis.from_row(row[0]) if row else None

    def update(self, analysis_id: int, **fields: Any) -> None:
        fields["updated_at"] = now_iso()
        columns = ", ".join(f"{name} = ?" for name in fields)
        conn = self.conn()
        with transaction(conn):
            conn.execute(
                f"UPDATE analyses SET {columns} WHERE id = ?", (*fields.values(), analysis_id)
            )

    def requeue_running(self) -> int:
        """Jobs a previous process left mid-run go back to the front of the queue."""
        conn = self.conn()
        with transaction(conn):
            return conn.execute(
                "UPDATE analyses SET status = ?, updated_at = ?, next_attempt_at = 0 "
                "WHERE status = ?",
                (QUEUED, now_iso(), RUNNING),
            ).rowcount

    def release(self, status: str) -> int:
        """Make every job waiting in ``status`` due now (the reason it waited is gone)."""
        conn = self.conn()
        with transaction(conn):
            return conn.execute(
                "UPDATE analyses SET status = ?, next_attempt_at = 0, updated_at = ? "
                "WHERE status = ?",
                (QUEUED, now_iso(), status),
            ).rowcount

    def retry(self, analysis_id: int) -> Analysis | None:
        """Operator's retry of a failed or waiting job: counters reset, due now."""
        conn = self.conn()
        with transaction(conn):
            changed = conn.execute(
                f"""UPDATE analyses SET status = ?, next_attempt_at = 0, invalid_outputs = 0,
                      timeouts = 0, transient_errors = 0, error = NULL, raw_output = NULL,
                      finished_at = NULL, updated_at = ?
                    WHERE id = ? AND status IN ({_RETRYABLE_IN})""",
                (QUEUED, now_iso(), analysis_id),
            ).rowcount
        return self.get(analysis_id) if changed else None


@dataclass
class OllamaSnapshot:
    """What the monitor last saw; health reports this and never probes inline."""

    checked_at: str | None = None
    reachable: bool | None = None
    version: str | None = None
    model_present: bool | None = None
    model_digest: str | None = None
    models_signature: tuple[str, ...] = ()
    detail: str | None = None


class OllamaMonitor:
    """Background prober of /api/version and /api/tags every ``ollama.poll_seconds``.

    Workers report what they see too (``note_unreachable``/``note_model_missing``),
    so health reflects a failure at once and the monitor's next successful probe
    counts as a recovery that releases the waiting jobs."""

    def __init__(self, client: OllamaClient, model: str, poll_seconds: float) -> None:
        self.client = client
        self.model = model
        self.poll_seconds = poll_seconds
        self.on_reachable: Callable[[], None] = lambda: None
        self.on_models_changed: Callable[[], None] = lambda: None
        self._lock = threading.Lock()
        self._snapshot = OllamaSnapshot()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def snapshot(self) -> OllamaSnapshot:
        with self._lock:
            return OllamaSnapshot(**vars(self._snapshot))

    def note_unreachable(self, detail: str) -> None:
        with self._lock:
            self._snapshot.reachable = False
            self._snapshot.detail = detail

    def note_model_missing(self) -> None:
        with self._lock:
            self._snapshot.model_present = False

    def probe(self) -> OllamaSnapshot:
        new = OllamaSnapshot(checked_at=now_iso())
        try:
            new.version = self.client.version()
            new.reachable = True
            models = self.client.tags()
            entry = self.client.find_model(models, self.model)
            new.model_present = entry is not None
            new.model_digest = str(entry.get("digest")) if entry else None
            new.models_signature = tuple(
                sorted(f"{m.get('name')}@{m.get('digest')}" for m in models)
            )
            if entry is None:
                new.detail = f"model {self.model} is not pulled"
        except OllamaError as exc:
            new.reachable = new.version is not None
            new.detail = str(exc)[:300]
        with self._lock:
            old, self._snapshot = self._snapshot, new
        # "Not True" includes the first probe after start: jobs a previous process
        # left waiting for Ollama need not sit out their backoff if it is up now.
        if new.reachable and old.reachable is not True:
            log.info("Ollama reachable (version %s)", new.version)
            self.on_reachable()
        if new.reachable and new.models_signature and new.models_signature != old.models_signature:
            self.on_models_changed()
        if not new.reachable and old.reachable is not False:
            log.warning("Ollama unreachable: %s", new.detail)
        return new

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.probe()
            except Exception:  # the monitor must outlive any surprise
                log.exception("Ollama probe failed unexpectedly")
            self._stop.wait(self.poll_seconds)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="ollama-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)


class AnalysisQueue:
    """Worker threads that run queued analyses, plus the automatic-analysis poller."""

    def __init__(self, ctx: Companion, client: OllamaClient, monitor: OllamaMonitor) -> None:
        self.ctx = ctx
        self.store = AnalysisStore(ctx)
        self.client = client
        self.monitor = monitor
        self.model: str = ctx.config.ollama["model"]
        self.workers: int = ctx.config.analysis["workers"]
        self.max_queue: int = ctx.config.analysis["max_queue"]
        self.auto: bool = ctx.config.analysis["auto"]
        self.quiet_seconds = float(ctx.config.analysis["quiet_minutes"]) * 60.0
        self.results_dir = ctx.config.data_dir / "ai_results"
        self.changed = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # While Ollama is failing, workers leave the queue alone until this monotonic
        # time instead of sending every queued job into the same failure.
        self._hold_until = 0.0
        monitor.on_reachable = self._ollama_back
        monitor.on_models_changed = self._models_changed

    # -- notifications
    def notify(self) -> None:
        """A job changed: wake workers and anyone waiting on a job's status."""
        self._wake.set()
        with self.changed:
            self.changed.notify_all()

    def _ollama_back(self) -> None:
        self._hold_until = 0.0
        released = self.store.release(WAITING_OLLAMA)
        if released:
            log.info("Ollama is back: %d waiting analyses queued again", released)
        self.notify()

    def _models_changed(self) -> None:
        snapshot = self.monitor.snapshot()
        if snapshot.model_present:
            released = self.store.release(WAITING_MODEL)
            if released:
                log.info("model %s present: %d waiting analyses queued again", self.model, released)
            self.notify()

    # -- lifecycle
    def start(self) -> None:
        requeued = self.store.requeue_running()
        if requeued:
            log.info("re-queued %d analyses left running by the previous process", requeued)
        self._stop.clear()
        for n in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"analysis-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.auto:
            thread = threading.Thread(target=self._auto_loop, name="analysis-auto", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self.notify()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        unfinished = [t.name for t in self._threads if t.is_alive()]
        if unfinished:
            log.warning(
                "analysis threads still busy at stop (%s); their jobs run again after restart",
                ", ".join(unfinished),
            )
        self._threads.clear()

    # -- work
    def _work(self) -> None:
        while not self._stop.is_set():
            job: Analysis | None = None
            try:
                if time.monotonic() >= self._hold_until:
                    job = self.store.claim()
            except sqlite3.Error as exc:
                log.error("claiming an analysis failed: %s", exc)
            if job is None:
                self._wake.wait(IDLE_POLL_SECONDS)
                self._wake.clear()
                continue
            self.notify()
            try:
                self.run(job)
            except Exception:
                # A bug must not kill the worker or leave the job "running" forever.
                log.exception("analysis %d crashed", job.id)
                self._finish_failed(job, "internal error while running the analysis; see the log")
            self.notify()

    def _finish_failed(self, job: Analysis, error: str, raw: str | None = None) -> None:
        fields: dict[str, Any] = {"status": FAILED, "error": error, "finished_at": now_iso()}
        if raw is not None:
            fields["raw_output"] = raw[:MAX_RAW_OUTPUT_CHARS]
        try:
            self.store.update(job.id, **fields)
        except sqlite3.Error:
            log.exception("recording the failure of analysis %d failed", job.id)
        log.warning("analysis %d failed: %s", job.id, error)

    def _wait(self, job: Analysis, status: str, delay: float, error: str, **extra: Any) -> None:
        self.store.update(
            job.id, status=status, next_attempt_at=time.time() + delay, error=error, **extra
        )

    def run(self, job: Analysis) -> None:
        started = time.monotonic()
        try:
            if job.source == "drive" and job.drive_id is not None:
                digest = build_drive_digest(self.ctx.config.db_path, job.device_id, job.drive_id)
            else:
                digest = json.loads(job.digest_json or "{}")
        except sqlite3.Error as exc:
            # The database is busy or briefly unavailable: not the job's fault.
            self._wait(job, QUEUED, DB_RETRY_SECONDS, f"digest could not be built: {exc}")
            return
        digest_ms = (time.monotonic() - started) * 1000
        if not digest.get("rowCount"):
            self._finish_failed(job, "the drive has no realtime_data rows to analyse")
            return
        try:
            template = load_template()
            messages = render_messages(digest, job.focus, template)
        except (OSError, PromptError) as exc:
            self._finish_failed(job, f"prompt template unusable: {exc}")
            return
        call_started = time.monotonic()
        try:
            chat = self.client.chat(self.model, messages, RESULT_SCHEMA)
        except ModelMissing as exc:
            self.monitor.note_model_missing()
            self._wait(job, WAITING_MODEL, MODEL_RECHECK_SECONDS, f"model not available: {exc}")
            log.warning("analysis %d waits for model %s: %s", job.id, self.model, exc)
            return
        except OllamaUnavailable as exc:
            failures = job.transient_errors + 1
            delay = backoff_seconds(failures)
            if exc.connect_failed:
                self.monitor.note_unreachable(str(exc))
            self._hold_until = time.monotonic() + delay
            self._wait(job, WAITING_OLLAMA, delay, str(exc), transient_errors=failures)
            log.warning("analysis %d waits %.0f s for Ollama: %s", job.id, delay, exc)
            return
        except OllamaTimeout as exc:
            timeouts = job.timeouts + 1
            if timeouts >= MAX_TIMEOUTS:
                self.store.update(job.id, timeouts=timeouts)
                self._finish_failed(job, f"timed out {timeouts} times: {exc}")
            else:
                self._wait(job, QUEUED, 0, f"timed out, retrying: {exc}", timeouts=timeouts)
            return
        except OllamaRequestError as exc:
            self._finish_failed(job, str(exc))
            return
        ollama_ms = (time.monotonic() - call_started) * 1000
        try:
            result = parse_result(chat.content)
        except InvalidOutput as exc:
            invalid = job.invalid_outputs + 1
            if invalid >= MAX_INVALID_OUTPUTS:
                self.store.update(job.id, invalid_outputs=invalid)
                self._finish_failed(
                    job, f"model output invalid {invalid} times; last: {exc.reason}", exc.raw
                )
            else:
                log.info("analysis %d: invalid model output, retrying once: %s", job.id, exc)
                self._wait(
                    job,
                    QUEUED,
                    0,
                    f"invalid model output, retrying: {exc.reason}",
                    invalid_outputs=invalid,
                    raw_output=exc.raw[:MAX_RAW_OUTPUT_CHARS],
                )
            return
        self._complete(
            job,
            result=result,
            digest=digest,
            model=chat.model,
            stats=chat.stats,
            prompt_version=template.name,
            timing={
                "digestMs": round(digest_ms, 1),
                "ollamaMs": round(ollama_ms, 1),
                "startedMonotonic": started,
            },
        )

    def _model_facts(self) -> tuple[str | None, str | None]:
        """Model digest and Ollama version for the record: asked fresh (two cheap
        local GETs) so the record names what really answered; the monitor's last
        view is the fallback if that fails."""
        snapshot = self.monitor.snapshot()
        digest, version = snapshot.model_digest, snapshot.version
        try:
            entry = self.client.find_model(self.client.tags(), self.model)
            if entry is not None:
                digest = str(entry.get("digest"))
            version = self.client.version()
        except OllamaError:
            pass
        return digest, version

    def _complete(
        self,
        job: Analysis,
        *,
        result: dict[str, Any],
        digest: dict[str, Any],
        model: str,
        stats: dict[str, Any],
        prompt_version: str,
        timing: dict[str, Any],
    ) -> None:
        model_digest, version = self._model_facts()
        finished = now_iso()
        started_monotonic = timing.pop("startedMonotonic")
        durations: dict[str, Any] = {
            "queueWaitS": _seconds_between(job.created_at, job.started_at),
            **timing,
            "totalMs": round((time.monotonic() - started_monotonic) * 1000, 1),
            "ollama": {
                "totalMs": _ns_to_ms(stats.get("total_duration")),
                "loadMs": _ns_to_ms(stats.get("load_duration")),
                "promptEvalCount": stats.get("prompt_eval_count"),
                "promptEvalMs": _ns_to_ms(stats.get("prompt_eval_duration")),
                "evalCount": stats.get("eval_count"),
                "evalMs": _ns_to_ms(stats.get("eval_duration")),
            },
        }
        relative = Path("ai_results") / job.device_id / f"{job.id}.json"
        template = load_template(prompt_version)
        record = {
            "id": job.id,
            "deviceId": job.device_id,
            "driveId": job.drive_id,
            "source": job.source,
            "trigger": job.trigger,
            "focus": job.focus,
            "status": DONE,
            "createdAt": job.created_at,
            "startedAt": job.started_at,
            "finishedAt": finished,
            "attempts": job.attempts,
            "model": model,
            "modelDigest": model_digest,
            "ollamaVersion": version,
            "promptVersion": prompt_version,
            "promptSha256": template.sha256,
            "resultSchemaVersion": RESULT_SCHEMA_VERSION,
            "durations": durations,
            "result": result,
            "digest": digest,
        }
        payload = json.dumps(record, indent=2, ensure_ascii=False).encode() + b"\n"
        try:
            write_atomic(self.ctx.config.data_dir / relative, payload)
        except OSError as exc:
            # Disk full or not writable: the answer is lost but the job is not;
            # it waits and runs again.
            self._wait(job, QUEUED, DB_RETRY_SECONDS, f"result could not be written: {exc}")
            log.error("analysis %d: writing %s failed: %s", job.id, relative, exc)
            return
        self.store.update(
            job.id,
            status=DONE,
            finished_at=finished,
            error=None,
            raw_output=None,
            model=model,
            model_digest=model_digest,
            ollama_version=version,
            prompt_version=prompt_version,
            durations_json=json.dumps(durations),
            result_path=str(relative),
            summary=result["summary"][:300],
            digest_json=json.dumps(digest, separators=(",", ":")),
            transient_errors=0,
        )
        log.info("analysis %d done (%s, %.0f ms)", job.id, model, durations["totalMs"])

    # -- automatic analysis
    def _auto_interval(self) -> float:
        return min(30.0, max(0.25, self.quiet_seconds / 4))

    def _auto_loop(self) -> None:
        while not self._stop.wait(self._auto_interval()):
            try:
                queued = self.scan_quiet_drives()
                if queued:
                    self.notify()
            except sqlite3.Error as exc:
                log.warning("automatic analysis scan failed: %s", exc)

    def scan_quiet_drives(self) -> int:
        """Queue an analysis for every drive whose newest row arrived more than the
        quiet period ago and that has none yet. Arrival time (not the rows' own
        timestamps) decides: a backlog of old rows still draining is not quiet.
        The Pi's drive_end event is deliberately not used: it does not always fire."""
        conn = self.ctx.db.conn()
        room = max(1, int(self.max_queue * AUTO_QUEUE_SHARE)) - self.store.depth(conn)
        if room <= 0:
            return 0
        cutoff = iso_z(datetime.fromtimestamp(time.time() - self.quiet_seconds, UTC))
        queued = 0
        devices = conn.execute(
            """SELECT device_id, last_received_at FROM table_stats
               WHERE table_name = 'realtime_data'"""
        ).fetchall()
        for device_id, last_received in devices:
            if device_id not in self.ctx.config.devices:
                continue
            analysed = {
                r[0]
                for r in conn.execute(
                    "SELECT drive_id FROM analyses WHERE device_id = ? AND source = 'drive'",
                    (device_id,),
                )
            }
            for drive_id in _drive_ids(conn, device_id):
                if drive_id in analysed:
                    continue
                # The device's newest row is older than the cutoff: all its drives
                # are quiet and no per-drive scan is needed.
                if last_received >= cutoff and _received_since(conn, device_id, drive_id, cutoff):
                    continue
                with transaction(conn):
                    if self.store.latest_for(conn, device_id, f"drive:{drive_id}") is not None:
                        continue
                    job = self.store.insert(
                        conn,
                        device_id=device_id,
                        drive_id=drive_id,
                        source="drive",
                        source_key=f"drive:{drive_id}",
                        trigger="auto",
                        focus=[],
                        model=self.model,
                    )
                log.info("drive %s/%d is quiet: analysis %d queued", device_id, drive_id, job.id)
                queued += 1
                if queued >= room:
                    return queued
        return queued


def _drive_ids(conn: sqlite3.Connection, device_id: str) -> Iterator[int]:
    """Distinct drive ids of a device by skipping through the drive index: one
    index seek per drive, instead of reading every row of every drive."""
    last: int | None = None
    while True:
        row = conn.execute(
            """SELECT min(drive_id) FROM synced_rows INDEXED BY synced_rows_by_drive
               WHERE device_id = ? AND table_name = 'realtime_data' AND drive_id > ?""",
            (device_id, last if last is not None else -(2**63)),
        ).fetchone()
        if row is None or row[0] is None:
            return
        last = int(row[0])
        yield last


def _received_since(conn: sqlite3.Connection, device_id: str, drive_id: int, cutoff: str) -> bool:
    # Newest rows first (the index is ordered by row id within a drive), so a drive
    # that is still receiving rows is recognised after a few index entries.
    row = conn.execute(
        """SELECT 1 FROM synced_rows INDEXED BY synced_rows_by_drive
           WHERE device_id = ? AND table_name = 'realtime_data' AND drive_id = ?
             AND received_at >= ?
           ORDER BY row_id DESC LIMIT 1""",
        (device_id, drive_id, cutoff),
    ).fetchone()
    return row is not None


def _ns_to_ms(value: Any) -> float | None:
    return round(value / 1e6, 1) if isinstance(value, int) else None


def _seconds_between(start: str | None, end: str | None) -> int | None:
    """Whole seconds between two of our timestamps (they have second resolution)."""
    if not start or not end:
        return None
    try:
        return max(0, int((parse_iso_z(end) - parse_iso_z(start)).total_seconds()))
    except ValueError:
        return None
