"""Types of the C extension schemas/avro/_creader.c (see compiled_reader.py)."""

from collections.abc import Callable
from typing import Any

class Unread(Exception): ...

class Program:
    def __init__(self, plan: tuple[Any, ...], fallback: Callable[[bytes, int], Any]) -> None: ...
    def read(self, data: bytes, position: int, /) -> Any: ...
