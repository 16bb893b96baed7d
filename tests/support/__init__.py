"""Helpers shared by the test suite: real services, a real worker, metric reading."""
