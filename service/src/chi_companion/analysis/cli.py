"""``chi-companion analyses list|show ID|retry ID``: the operator's view of the
analysis queue, read straight from the database (the server need not be up).

``retry`` only changes the job's row; a running server's worker notices it
within a second (it polls for due jobs when idle).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sqlite3
import sys
from typing import Any

from ..core.cli_support import (
    AddGroup,
    IntArg,
    config_from,
    configured_device,
    device_arg,
    open_database,
    record_id,
)
from ..core.config import Config
from ..core.context import Core
from .jobs import STATUSES, Analysis, AnalysisStore
from .routes import MAX_LIST

EXIT_OK = 0
EXIT_ERROR = 1


def _store(args: argparse.Namespace) -> tuple[Config, AnalysisStore]:
    config = config_from(args)
    if getattr(args, "device", None) is not None:
        configured_device(config, args.device)
    core = dataclasses.replace(Core.from_config(config), db=open_database(config))
    return config, AnalysisStore(core)


def _row(job: Analysis) -> str:
    drive = str(job.drive_id) if job.drive_id is not None else "inline"
    note = job.summary if job.status == "done" else (job.error or "")
    note = " ".join((note or "").split())[:60]
    return (
        f"{job.id:>6}  {job.device_id:<16} {drive:>7}  {job.status:<18} "
        f"{job.created_at:<20}  {job.finished_at or '-':<20}  {note}"
    )


def cmd_list(args: argparse.Namespace) -> int:
    _, store = _store(args)
    try:
        jobs = store.list(args.device, args.drive, args.status, args.limit)
    except sqlite3.Error as exc:
        print(f"cannot read analyses: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps({"analyses": [j.as_json(full=False) for j in jobs]}, indent=2))
        return EXIT_OK
    print(
        f"{'ID':>6}  {'DEVICE':<16} {'DRIVE':>7}  {'STATUS':<18} {'CREATED':<20}  "
        f"{'FINISHED':<20}  SUMMARY / ERROR"
    )
    for job in jobs:
        print(_row(job))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    config, store = _store(args)
    try:
        job = store.get(args.id)
    except sqlite3.Error as exc:
        print(f"cannot read analyses: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if job is None:
        print(f"no analysis {args.id}", file=sys.stderr)
        return EXIT_ERROR
    view: dict[str, Any] = job.as_json(config.data_dir)
    if args.digest and job.digest_json:
        view["digest"] = json.loads(job.digest_json)
    print(json.dumps(view, indent=2, ensure_ascii=False))
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    _, store = _store(args)
    try:
        job = store.get(args.id)
        if job is None:
            print(f"no analysis {args.id}", file=sys.stderr)
            return EXIT_ERROR
        retried = store.retry(args.id)
    except sqlite3.Error as exc:
        print(f"cannot update analysis {args.id}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if retried is None:
        print(
            f"analysis {args.id} is {job.status}; only failed or waiting analyses can be retried "
            '(ask for a new one with POST /api/v1/analyze and "force": true)',
            file=sys.stderr,
        )
        return EXIT_ERROR
    print(f"analysis {args.id} queued again (was {job.status})")
    return EXIT_OK


def register(add_group: AddGroup) -> None:
    """Add the ``analyses`` command group to the ``chi-companion`` parser (see cli.py)."""
    action = add_group("analyses", "list, show and retry AI analyses of drives")

    listing = action("list", cmd_list, "list analyses, newest first")
    listing.add_argument("--device", type=device_arg, help="only this device")
    listing.add_argument("--drive", type=IntArg(), help="only this drive")
    listing.add_argument("--status", choices=STATUSES, help="only this status")
    listing.add_argument("--limit", type=IntArg(1, MAX_LIST), default=50, help=f"1-{MAX_LIST} (50)")
    listing.add_argument("--json", action="store_true", help="print JSON like the API")
    show = action("show", cmd_show, "print one analysis with its result as JSON")
    show.add_argument("id", type=record_id)
    show.add_argument("--digest", action="store_true", help="include the digest sent to the model")
    retry = action("retry", cmd_retry, "queue a failed or waiting analysis again")
    retry.add_argument("id", type=record_id)
