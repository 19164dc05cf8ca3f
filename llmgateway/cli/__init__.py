"""The `llmgateway` command: serving, keys, limits, usage and first-install admin commands, which
work on the store directly."""
