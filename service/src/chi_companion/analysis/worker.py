"""The analysis workers and the automatic analysis of quiet drives.

Why a queue: the GPU runs one generation at a time and a generation takes from
seconds (GPU) to many minutes (CPU fallback), so requests are accepted at once
(202) and worked through by ``analysis.workers`` threads (one by default, so
Ollama is never asked for two analyses at once). Job states: see ``jobs``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..core.clock import iso_z, now_iso, parse_iso_z
from ..core.context import Core
from ..core.db import transaction
from ..core.files import write_atomic
from ..sync.queries import drive_ids, realtime_last_received, received_since
from .digest import build_drive_digest
from .jobs import (
    AUTO_QUEUE_SHARE,
    DB_RETRY_SECONDS,
    DONE,
    FAILED,
    IDLE_POLL_SECONDS,
    MAX_INVALID_OUTPUTS,
    MAX_RAW_OUTPUT_CHARS,
    MAX_TIMEOUTS,
    MODEL_RECHECK_SECONDS,
    QUEUED,
    STOP_GRACE_SECONDS,
    WAITING_MODEL,
    WAITING_OLLAMA,
    Analysis,
    AnalysisStore,
    backoff_seconds,
)
from .monitor import OllamaMonitor
from .ollama import (
    AnswerTruncated,
    ModelMissing,
    OllamaClient,
    OllamaError,
    OllamaRequestError,
    OllamaTimeout,
    OllamaUnavailable,
)
from .prompt import PromptError, load_template, render_messages
from .result import RESULT_SCHEMA, RESULT_SCHEMA_VERSION, InvalidOutput, parse_result

log = logging.getLogger(__name__)


class AnalysisQueue:
    """Worker threads that run queued analyses, plus the automatic-analysis poller."""

    def __init__(self, ctx: Core, client: OllamaClient, monitor: OllamaMonitor) -> None:
        self.ctx = ctx
        self.store = AnalysisStore(ctx)
        self.client = client
        self.monitor = monitor
        self.model: str = ctx.config.ollama.model
        self.workers: int = ctx.config.analysis.workers
        self.max_queue: int = ctx.config.analysis.max_queue
        self.auto: bool = ctx.config.analysis.auto
        self.quiet_seconds = float(ctx.config.analysis.quiet_minutes) * 60.0
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
                self.ctx.faults.recovered(threading.current_thread().name)
            except Exception as exc:
                # Any exception, not only the database's: a dead worker is a silent outage.
                log.exception("claiming an analysis failed")
                delay = self.ctx.faults.failed(threading.current_thread().name, exc)
                self._stop.wait(delay)
                continue
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
        except AnswerTruncated as exc:
            # Not retried: the same prompt at this temperature is cut the same way again.
            self._finish_failed(job, str(exc), exc.content[:MAX_RAW_OUTPUT_CHARS])
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
        delay = self._auto_interval()
        while not self._stop.wait(delay):
            delay = self._auto_interval()
            try:
                queued = self.scan_quiet_drives()
                self.ctx.faults.recovered("analysis-auto")
                if queued:
                    self.notify()
            except Exception as exc:
                # The scheduler must outlive anything a row can do to it; it backs off
                # and /health names it until a scan succeeds again.
                log.exception("automatic analysis scan failed")
                delay = max(delay, self.ctx.faults.failed("analysis-auto", exc))

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
        devices = realtime_last_received(conn)
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
            for drive_id in drive_ids(conn, device_id):
                if drive_id in analysed:
                    continue
                # The device's newest row is older than the cutoff: all its drives
                # are quiet and no per-drive scan is needed.
                if last_received >= cutoff and received_since(conn, device_id, drive_id, cutoff):
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
