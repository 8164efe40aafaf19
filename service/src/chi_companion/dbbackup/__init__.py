"""``chi-companion db backup|restore``: the companion's own database (every synced row, the
analysis index, the backup catalog) copied online into ``db-backups/`` and put back after a
disaster."""
