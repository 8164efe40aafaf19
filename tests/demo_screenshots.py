"""Regenerate docs/images/*.png: the status page on demo data, in the browser the tests use.

Starts a companion and the Ollama emulator on 127.0.0.1, syncs demo drives, uploads a backup,
writes a replication status, lets the emulator analyse a drive, then photographs the overview
and that drive's page with headless Chromium. Run by `make screenshots`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from selenium.webdriver.common.by import By

from tests.browser import ROOT, chromium, full_page_screenshot, go
from tests.companion_process import Companion
from tests.drive_rows import drive_rows
from tests.fake_gpu import describe, fake_gpu_env
from tests.ollama_emulator import OllamaEmulator
from tests.sync_payloads import sync_body

OUT = ROOT / "docs" / "images"


def sync(comp: Companion, rows: list[dict], device: str, key: str) -> None:
    for i in range(0, len(rows), 2000):
        status, _, body = comp.request(
            "POST",
            "/api/v1/sync",
            sync_body("realtime_data", rows[i : i + 2000], device=device),
            key=key,
        )
        assert status == 200, body


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        # The real server's 12 GB card (a test double), so the pictures show the model on the
        # GPU as on Chi-Srv-01, not this machine's CPU.
        os.environ.update(fake_gpu_env(Path(tmp)))
        describe(os.environ["FAKE_NVIDIA_SMI_CONF"], "550.163.01", 11800)
        emu = OllamaEmulator(models=("gemma2:2b",)).start()
        comp = Companion(Path(tmp), {"ollama": {"url": emu.url, "poll_seconds": 0.3}}).start()
        try:
            first = 1
            for drive, seconds in ((1, 900), (2, 1500), (3, 2400)):
                rows = drive_rows(drive, seconds, first_id=first, start_hour=6 + drive * 3)
                sync(comp, rows, comp.device, comp.key)
                first += len(rows)
            sync(comp, drive_rows(1, 600), comp.other_device, comp.other_key)
            comp.request(
                "PUT",
                f"/api/v1/backups/{comp.device}/database/obd.db",
                raw=b"demo backup " * 4000,
                headers={"Content-Type": "application/octet-stream"},
            )
            status_file = comp.data_dir / "replication" / "status.json"
            status_file.parent.mkdir(exist_ok=True)
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1800))
            status_file.write_text(
                json.dumps(
                    {
                        "started_at": when,
                        "finished_at": when,
                        "exit_code": 0,
                        "last_success_at": when,
                        "bytes": 52_428_800,
                        "files": 14,
                    }
                )
            )
            _, _, job = comp.request(
                "POST", "/api/v1/analyze", {"deviceId": comp.device, "driveId": 3}
            )
            while (
                comp.request("GET", f"/api/v1/analyses/{job['id']}?wait=5")[2]["status"] != "done"
            ):
                pass
            OUT.mkdir(parents=True, exist_ok=True)
            with chromium(1200, 900) as b:
                b.get(comp.url + "/login")
                b.find_element(By.NAME, "key").send_keys(comp.operator_key)
                go(b, By.CSS_SELECTOR, "#sign-in button")
                full_page_screenshot(b, OUT / "overview.png")
                b.get(f"{comp.url}/devices/{comp.device}/drives/3")
                full_page_screenshot(b, OUT / "drive.png")
        finally:
            comp.stop()
            emu.stop()
    for name in ("overview.png", "drive.png"):
        print(f"wrote {OUT / name} ({(OUT / name).stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
