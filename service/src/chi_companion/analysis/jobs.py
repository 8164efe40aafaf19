"""Analysis jobs: their statuses, the ``analyses`` table and every read and change of a job.

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
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..core.clock import iso_z, now_iso
from ..core.context import Core
from ..core.db import transaction

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


class AnalysisStore:
    """The ``analyses`` table: every read and state change of a job."""

    def __init__(self, ctx: Core) -> None:
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

    def device_depth(self, conn: sqlite3.Connection, device_id: str) -> int:
        return int(
            conn.execute(
                f"SELECT count(*) FROM analyses WHERE status IN ({_ACTIVE_IN}) AND device_id = ?",
                (device_id,),
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
