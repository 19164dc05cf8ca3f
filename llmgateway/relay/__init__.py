"""The `/v1` request path after authentication: reading the body, the payload the upstream gets,
the pycurl client, relaying the answer and settling the call."""
