"""NAS replication, as /health reports it (the replication itself is the nas_replication
role's job; this package only reads the status file its wrapper writes)."""
