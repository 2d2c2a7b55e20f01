"""The domain: models, the job state machine, services, settings, persistence and the event bus.

Nothing here knows about HTTP or GraphQL; transports call the services, backends are reached only
through the protocols in ``backends/*/base.py``.
"""
