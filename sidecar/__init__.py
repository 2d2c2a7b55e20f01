"""The data side-car: stage a job's inputs in from storage and its outputs out to storage.

Runs as ``wml sidecar stage-in|stage-out`` in its own container, or in-process for the local backend.
It depends only on the storage backends.
"""
