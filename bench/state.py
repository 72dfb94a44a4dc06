"""The producer's local state under one refresh's writes, empty and full (``make bench-state``).

``make bench`` publishes into an empty local state, where a refresh's new keys are
appended at the end of each table. A producer that has run for a while holds a row
for every key it published, and a refresh's updates land all over the key space.
This benchmark writes one refresh's rows through
:class:`~producer.published_state.PublishedState` as a refresh does (chunks of
1,000 in one transaction, then the commit and the writer thread's checkpoint),
each pass in a process of its own:

* ``empty``: into an empty state, new keys in key order (what ``make bench`` sees,
  and the ceiling);
* ``full``: into a state already holding ``--rows`` rows, ``--updates`` of the
  writes replacing rows at random keys and the rest new keys, in random order (a
  refresh's rows arrive in ModifiedDate order, not key order).

It reports the CPU a row (every thread of the process: the state's writer thread does
the writing), the wall time to the commit and to the checkpoint's end, the write-ahead
log the refresh left, the ratio to the empty pass and the peak RSS. No service is
needed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.environment import git_describe
from bench.errors import BenchError, Deadline
from bench.options import add_run_arguments
from bench.output import err, out, print_runs, progress_printer
from bench.phases import in_fresh_process
from bench.rss import PhaseMemory
from producer.published_state import PublishedState
from producer.state_changelog import packed_key

__all__ = ["main"]

#: Rows a refresh hands the state at a time (``producer.row_process.CHUNK``).
_CHUNK = 1000
#: The contract table written: an order's lines, keyed by (OrderID, line).
_TABLE = "order_details"
#: Lines an order has at most in the keys made here.
_LINES = 8


def _row(key: int, version: int, payload: bytes) -> tuple[int, int, int, bytes]:
    """What a refresh hands ``put_rows`` for key number ``key``: packed key, version,
    customer and the row's bytes."""
    return (packed_key((key // _LINES + 1, key % _LINES + 1)), version, key % 5000, payload)


def _fill(path: Path, rows: int, payload: bytes, progress: Any) -> None:
    """A state holding key numbers 0 .. rows-1, committed and checkpointed."""
    state = PublishedState(path)
    try:
        state.begin()
        for start in range(0, rows, 10 * _CHUNK):
            state.put_rows(
                _TABLE,
                [_row(k, 1, payload) for k in range(start, min(start + 10 * _CHUNK, rows))],
            )
            if start % 200_000 == 0:
                progress(f"filling the state: {start:,} of {rows:,} rows")
        state.commit("filled")
    finally:
        state.close()


def _replaced(rows: int, writes: int, updates: float) -> int:
    """How many of a refresh's ``writes`` replace a row of a state of ``rows``."""
    return min(int(writes * updates), rows)


def _keys(rows: int, writes: int, updates: float, seed: int) -> list[int]:
    """The key numbers one refresh writes: into an empty state, new keys in order; into a
    full one, ``updates`` of them existing keys at random, the rest new, shuffled."""
    if rows == 0:
        return list(range(writes))
    rng = random.Random(seed)
    replaced = _replaced(rows, writes, updates)
    keys = rng.sample(range(rows), replaced) + list(range(rows, rows + writes - replaced))
    rng.shuffle(keys)
    return keys


def write_phase(
    path: str, rows: int, writes: int, updates: float, seed: int, payload: bytes
) -> dict[str, Any]:
    """One refresh's writes into the state at ``path`` (run in a fresh process), each row
    ``payload`` as its bytes."""
    keys = _keys(rows, writes, updates, seed)
    memory = PhaseMemory()
    state = PublishedState(Path(path))
    cpu = time.process_time()
    started = time.perf_counter()
    state.begin()
    for start in range(0, len(keys), _CHUNK):
        state.put_rows(_TABLE, [_row(k, 2, payload) for k in keys[start : start + _CHUNK]])
    state.commit("measured")
    committed = time.perf_counter() - started
    wal = Path(f"{path}-wal")
    wal_mb = wal.stat().st_size / 1e6 if wal.exists() else 0.0
    state.close()  # waits for the writer thread's checkpoint
    return {
        "rows_before": rows,
        "writes": len(keys),
        "updates": _replaced(rows, writes, updates),
        "cpu_seconds": time.process_time() - cpu,
        "commit_seconds": committed,
        "seconds": time.perf_counter() - started,
        "wal_mb": round(wal_mb, 1),
        **memory.figures(),
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.state",
        description=(
            "CPU and time a row of one refresh's writes into the producer's local state: "
            "empty (what make bench sees, the ceiling) and holding --rows rows."
        ),
    )
    p.add_argument("--rows", type=int, default=1_000_000, help="rows the full state holds")
    p.add_argument("--writes", type=int, default=200_000, help="rows one refresh writes")
    p.add_argument(
        "--updates",
        type=float,
        default=0.5,
        help="share of the writes into the full state that replace a row (default: 0.5)",
    )
    p.add_argument("--row-bytes", type=int, default=160, help="bytes of each row's Avro body")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--dir", help="folder for the state files (default: a temporary one)")
    add_run_arguments(p)
    return p


def _check(args: argparse.Namespace) -> None:
    if args.rows < 1 or args.writes < 1 or args.row_bytes < 1:
        msg = "--rows, --writes and --row-bytes must be at least 1"
        raise BenchError(msg)
    if not 0.0 <= args.updates <= 1.0:
        msg = f"--updates must be between 0 and 1, not {args.updates}"
        raise BenchError(msg)


def run(args: argparse.Namespace) -> dict[str, Any]:
    _check(args)
    deadline = Deadline(args.timeout)
    progress = progress_printer(args.json)
    folder = Path(args.dir or tempfile.mkdtemp(prefix="qs-bench-state-"))
    folder.mkdir(parents=True, exist_ok=True)
    payload = random.Random(args.seed).randbytes(args.row_bytes)
    try:
        base = folder / "full.sqlite"
        started = time.perf_counter()
        _fill(base, args.rows, payload, progress)
        progress(f"filled {args.rows:,} rows in {time.perf_counter() - started:.1f}s")
        runs = []
        for name, rows in (("empty", 0), ("full", args.rows)):
            work = folder / f"{name}-work.sqlite"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{work}{suffix}").unlink(missing_ok=True)
            if rows:
                shutil.copyfile(base, work)
            found = in_fresh_process(
                f"the {name} state's writes",
                deadline,
                args.verbose,
                write_phase,
                str(work),
                rows,
                args.writes,
                args.updates,
                args.seed,
                payload,
            )
            writes = found["writes"]
            found.update(
                state=name,
                cpu_us_per_row=round(found["cpu_seconds"] / writes * 1e6, 2),
                commit_us_per_row=round(found["commit_seconds"] / writes * 1e6, 2),
                wall_us_per_row=round(found["seconds"] / writes * 1e6, 2),
                rows_per_second=round(writes / found["seconds"], 1),
            )
            runs.append(found)
            progress(
                f"{name}: {found['cpu_us_per_row']} us of CPU a row, "
                f"{found['rows_per_second']:,.0f} rows/s to the checkpoint's end"
            )
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    empty, full = runs
    return {
        "runs": runs,
        "cpu_ratio": round(full["cpu_us_per_row"] / empty["cpu_us_per_row"], 2),
        "environment": {
            "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "git": git_describe(),
            "folder": "temporary" if args.dir is None else "--dir",
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        report = run(args)
    except BenchError as exc:
        err.print(f"[red]error:[/] {exc}")
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print_runs(
        "The producer's local state: one refresh's writes",
        [
            ("state", "{state}"),
            ("rows", "{rows_before:,}"),
            ("updates", "{updates:,}/{writes:,}"),
            ("CPU µs/row", "{cpu_us_per_row}"),
            ("rows/s", "{rows_per_second:,.0f}"),
            ("WAL MB", "{wal_mb}"),
            ("RSS MB", "{peak_rss_mb}"),
        ],
        report["runs"],
        caption=f"CPU full / empty: {report['cpu_ratio']}",
    )
    out.print(f"queuestream {report['environment']['git']}, {report['environment']['cpus']} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
