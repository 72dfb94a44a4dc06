"""``queuestream verify``: reconcile a target with the source database it came from."""

from __future__ import annotations

import sqlalchemy as sa

from consumers import target_named
from consumers.reconcile import Reconciliation, compare
from queuestream.databases import create_engine, describe_url, unavailable
from queuestream.errors import ConfigurationError
from queuestream.settings import Settings

__all__ = ["verify"]


def verify(settings: Settings, target_name: str) -> Reconciliation:
    """Compare what ``target_name`` holds with what the source says it should hold."""
    target = target_named(target_name)
    source = create_engine(settings.source_url, existing="the sync database")
    destination = create_engine(
        settings.target_url_for(target_name),
        existing=f"the {target_name} target",
        absent=f"run 'queuestream consume {target_name} --target URL' first, or check the path",
    )
    try:
        with source.connect() as src:
            expected = target.expected(src, settings.zone)
    except sa.exc.OperationalError as exc:
        raise unavailable(exc, source) from exc
    finally:
        source.dispose()
    try:
        with destination.connect() as dst:
            inspector = sa.inspect(dst)
            missing = [t for t in target.metadata.tables if not inspector.has_table(t)]
            if missing:
                msg = (
                    f"{describe_url(destination.url)} has no {target_name} target "
                    f"(missing {', '.join(sorted(missing))}): run "
                    f"'queuestream consume {target_name} --target URL' first"
                )
                raise ConfigurationError(msg)
            actual = target.actual(dst)
    except sa.exc.OperationalError as exc:
        raise unavailable(exc, destination) from exc
    finally:
        destination.dispose()
    return compare(target_name, expected, actual)
