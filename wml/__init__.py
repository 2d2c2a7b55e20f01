"""The entry point: the app factory (wires transports to core and backends) and the ``wml`` command."""
