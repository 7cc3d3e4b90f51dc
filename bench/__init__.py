"""Benchmarks (``make bench``): measured numbers, never asserted by tests."""
