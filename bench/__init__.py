"""Benchmarks: scripts that measure and report (``make bench``), never timed tests."""
