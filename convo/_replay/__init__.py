"""Stage 5, replays: re-running stored conversations against other models and reproducing recorded runs."""
