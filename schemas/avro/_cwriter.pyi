"""Types of the C extension schemas/avro/_cwriter.c (see compiled_writer.py)."""

from collections.abc import Callable, Sequence
from typing import Any

class Unwritten(Exception): ...

class Program:
    def __init__(
        self, plan: tuple[tuple[Any, ...], ...], fallback: Callable[[Sequence[Any]], bytes]
    ) -> None: ...
    def write(self, row: Sequence[Any], /) -> bytes: ...
