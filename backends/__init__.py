"""Pluggable backends: where jobs run (``backends.workflow``) and where files live (``backends.storage``)."""
