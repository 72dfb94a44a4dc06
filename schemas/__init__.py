"""The event contract as data; ``avro`` holds the .avsc files and their codec."""

from __future__ import annotations

__all__: list[str] = []
