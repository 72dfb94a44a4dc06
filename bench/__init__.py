"""Benchmarks, each a module run from the repository root: ``python -m bench.producer``.

``make bench``, ``make bench-consumers`` and ``make bench-recovery`` run them against
local services; ``python -m bench.NAME --help`` lists each one's options.
"""
