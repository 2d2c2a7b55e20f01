"""Storage backends: where files live. ``base`` is the protocol; implementations are chosen by URL scheme."""
