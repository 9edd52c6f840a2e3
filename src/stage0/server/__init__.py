"""The HTTP service: the hosted-API-compatible ``/check``, usage, decisions, health and metrics."""
