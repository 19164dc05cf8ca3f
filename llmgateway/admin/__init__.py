"""The admin API's core: people, keys, admin tokens, the audit log and the model catalog."""
