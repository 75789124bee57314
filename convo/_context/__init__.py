"""Stage 2, the context: choosing the history that fits the token budget (selection, summaries) and reporting what was kept."""
