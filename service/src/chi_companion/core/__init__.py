"""What every feature builds on: configuration, the database, HTTP helpers, auth, domain
errors and their one mapping to HTTP, file helpers, /health's frame and the server.

Nothing in ``core`` imports a feature package (checked by import-linter in ``make lint``).
"""
