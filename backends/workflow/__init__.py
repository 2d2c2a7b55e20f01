"""Workflow backends: where jobs run. ``base`` is the protocol; implementations are chosen by URL scheme."""
