"""The routed API, one router per concern: ``check`` (``POST /check``, ``GET /usage``),
``decisions`` (the decision log), ``approvals`` (approvals, votes, break-glass, execution
tokens, JWKS) and ``ops`` (health, readiness, metrics, ``/docs``). Each route gets the app's
``AppState`` by the ``app_state`` dependency."""
