"""Who is calling and what they may do: API keys and their cache, admin tokens, browser sessions,
the SAML service provider, and the one lookup of the current actor (`identity`, `caller`)."""
