"""Export and import of stored conversations (JSONL, fine-tuning formats, convo's native format)."""
