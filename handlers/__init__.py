"""The HTTP layer: thin Tornado handlers, one module per door, and the app that mounts them (`app`)."""
