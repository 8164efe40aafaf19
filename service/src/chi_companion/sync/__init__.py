"""Rows synced from the Pi: ``POST /sync``, ``GET /sync/status``, ``chi-companion sync-status``.

The only package that reads or writes the synced-rows tables (``synced_rows``, ``table_stats``,
``devices``, ``sync_history``, ``sync_usage``, ``drive_summaries``); other features ask
``sync.queries``.
"""
