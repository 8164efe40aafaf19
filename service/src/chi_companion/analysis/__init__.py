"""AI analysis of drives: the Ollama client, the job queue and its workers, the drive digest,
the prompt and result schema, the HTTP routes, the ``chi-companion analyses`` commands and the
``ollama`` component of /health."""
