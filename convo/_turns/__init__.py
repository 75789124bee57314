"""Stage 5, turns: one user message in, one stored reply and its run record out (tools, idempotency, streaming)."""
