"""Limits and budgets: the rules and their periods, the in-process and Redis counters, the budgets
held in the store while Redis is away, and the admission and settling of each call."""
