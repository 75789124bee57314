"""Stage 3, rendering: the chat message list and the flattened completion prompt (chat templates, Jinja, control-token neutralization)."""
