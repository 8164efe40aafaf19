"""Backup uploads from the Pi: the HTTP routes, the on-disk store and its catalog, retention,
the ``chi-companion backups`` commands and the ``backups`` component of /health."""
