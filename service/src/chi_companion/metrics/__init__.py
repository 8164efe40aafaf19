"""``GET /metrics``: the companion's state in the Prometheus text format."""
