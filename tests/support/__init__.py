"""Fixtures and helpers shared by the tests: real servers on loopback, test catalogues, clients."""
