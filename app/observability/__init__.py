"""Operators' view of the service: Prometheus metrics (`GET /metrics`), with no team's data in any label."""
