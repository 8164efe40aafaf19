"""Rows synced from the Pi: ``POST /sync``, ``GET /sync/status``, ``chi-companion sync-status``.

The only package that reads or writes the synced-rows tables (``synced_rows``, ``table_stats``,
``devices``, ``sync_history``); other features ask ``sync.queries``.
"""
