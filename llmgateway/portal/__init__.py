"""The self-service portal's core: a person's login, terms, keys and usage."""
