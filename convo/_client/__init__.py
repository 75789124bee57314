"""Stage 4, the client: OpenAI-compatible HTTP (sync and async), retries, deadlines, streaming and typed errors."""
