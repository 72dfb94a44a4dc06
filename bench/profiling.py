"""A profile of one pass of a benchmark (``--profile DIR``): pyinstrument, else cProfile."""

from __future__ import annotations

import cProfile
import io
import pstats
from collections.abc import Callable
from pathlib import Path

__all__ = ["profiled"]


def profiled(call: Callable[[], object], folder: Path, name: str) -> str:
    """Run ``call`` under pyinstrument (cProfile when it is not installed); the report's path.

    cProfile writes ``<name>.cprofile.txt`` (top 40 by own and by cumulative time)
    and ``<name>.pstats``; pyinstrument ``<name>.pyinstrument.txt`` and ``.html``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    try:
        from pyinstrument import Profiler
    except ImportError:
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            call()
        finally:
            profiler.disable()
        path = folder / f"{name}.cprofile.txt"
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats(40)
        path.write_text(text.getvalue(), encoding="utf-8")
        profiler.dump_stats(folder / f"{name}.pstats")
        return str(path)
    sampler = Profiler(interval=0.0005)
    sampler.start()
    try:
        call()
    finally:
        sampler.stop()
    path = folder / f"{name}.pyinstrument.txt"
    path.write_text(
        sampler.output_text(unicode=True, color=False, show_all=False), encoding="utf-8"
    )
    (folder / f"{name}.pyinstrument.html").write_text(sampler.output_html(), encoding="utf-8")
    return str(path)
