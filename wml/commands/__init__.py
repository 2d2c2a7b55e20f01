"""The ``wml`` client commands: what a consumer and an operator run against the API."""
