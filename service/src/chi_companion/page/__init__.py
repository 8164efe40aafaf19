"""The owner's status page: sign-in, overview, drives, a drive's charts and analysis, backups."""
