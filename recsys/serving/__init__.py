"""Serving: the HTTP API over the live profiles and recommendations (``recsys serve``), its
security (API keys, scopes, rate limits, host checks) and the explorer page."""
