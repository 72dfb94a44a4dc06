"""Benchmarks, each a module run from the repository root: ``python -m bench.producer``.

``make bench``, ``make bench-consumers`` and ``make bench-recovery`` run them against
local services; ``python -m bench.NAME --help`` lists each one's options.

The benchmarks (what each measures is in its docstring):

=======================  ===================================================================
``producer``             one refresh's events/s, with the raw-producer ceiling
``consumers``            one consumer's rows applied/s into PostgreSQL, with the plain-write
                         ceiling
``recovery``             a rebuild as of now vs the ordinary consumer; monitor and replay
``freshness``            refresh start -> commit in each target, live, under load
``sweep``                a sweep pass over unchanged rows; the published state rebuilt
``soak``                 the real commands under steady load for minutes: RSS, lag, errors
=======================  ===================================================================

Their parts: ``producer_ceiling``, ``producer_breakdown`` (Kafka-free and profiled
passes), ``consuming`` (one timed consumer run, its target counted and verified),
``consumer_ceiling``, ``consumer_breakdown``, ``freshness_records`` (markers and sync
logs read back), ``freshness_figures`` (row-weighted latency and its parts),
``cycle_cpu`` (the machine's busy cores through the refresh cycle), ``sweep_phases``.
What every benchmark shares, about running a measurement and nothing about what is
measured:

=======================  ===================================================================
``options``              the options every benchmark takes
``session``              one run: deadline, progress, Kafka, its topics removed; ``main_with``
``errors``               ``BenchError`` and the ``--timeout`` deadline
``services``             where Kafka and PostgreSQL are; the settings of a run
``scratch``              fresh databases and topic prefixes, removed again
``source``               the simulated source and its one timed refresh
``readback``             every committed message of some topics
``output``               stdout and stderr, progress lines, tables of runs
``environment``          machine, versions, broker flags and commit of a figure
``profiling``            ``--profile``: pyinstrument, else cProfile
``rss``                  peak RSS (VmHWM) of the process doing the work
``phases``               work in a fresh process of its own (its peak RSS its own)
``commands``             queuestream commands run as child processes, always stopped
``latency``              refresh start times from ids; row-weighted percentiles
=======================  ===================================================================
"""

from __future__ import annotations

__all__: list[str] = []
