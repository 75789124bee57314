"""Stage 1, the store: the SQL schema, its engine and driver, and the plans that read and write conversations, messages, runs and replays."""
