"""What can be called and where it goes: the models (from the config and the admin API), the `/v1`
endpoint registry, routing to upstream pools with ejection and active health checks, and where
API-made models and their secrets may point."""
