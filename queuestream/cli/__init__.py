"""The ``queuestream`` command. Thin: it parses flags, builds settings, calls the library.

Every queuestream error is printed as ``Type: message`` and exits 1; ``--traceback``
shows the traceback too. A database or Kafka error that reached it unclassified is
classified here (:func:`queuestream.failures.escaped_failure`) and printed the same
way. This module holds only the app and :func:`main`, the one place that turns
errors into exit statuses; the rest of the package, by idea:

===========================  ===============================================================
``options``                  global options, the settings they build, shared options, times
``output``                   the two consoles (results on stdout, the rest on stderr),
                             JSON, the progress bar
``signals``                  SIGTERM / Ctrl-C: finish the work in hand, then exit
``producer_commands``        ``sim``, ``refresh``, ``produce``, ``sweep``
``demo_command``             ``demo``
``consumer_commands``        ``consume``, ``verify``
``recovery_commands``        ``replay``, ``rebuild``
``monitor_command``          ``monitor``
``render_refresh``           refresh results, as lines or JSON
``render_verify``            a reconciliation, as a table or JSON
``render_replay``            a replay plan, as a table or JSON
===========================  ===============================================================

The commands are registered below in the order ``queuestream --help`` lists them.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import typer
from rich.markup import escape

from queuestream.cli.consumer_commands import consume, verify
from queuestream.cli.demo_command import demo
from queuestream.cli.monitor_command import monitor
from queuestream.cli.options import global_options, state
from queuestream.cli.output import err_console
from queuestream.cli.producer_commands import produce, refresh, sim, sweep
from queuestream.cli.recovery_commands import rebuild, replay
from queuestream.errors import QueuestreamError
from queuestream.failures import escaped_failure
from queuestream.gc_tuning import tune_for_streaming

__all__ = ["app", "main"]

app = typer.Typer(
    help="Change events from an Exigo-style sync database's queue snapshot to Kafka.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.callback()(global_options)
for _command in (sim, refresh, produce, sweep, demo, consume, verify, replay, rebuild, monitor):
    app.command()(_command)


def _stop(exc: QueuestreamError) -> NoReturn:
    """One line, ``Type: message``, and exit status 1 (the traceback too with --traceback)."""
    if state.traceback:
        err_console.print_exception()
    err_console.print(f"[bold red]{type(exc).__name__}[/]: {escape(str(exc))}", highlight=False)
    sys.exit(1)


def main() -> None:
    tune_for_streaming()
    try:
        # Without standalone mode click returns a command's typer.Exit code instead of exiting.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except QueuestreamError as exc:
        _stop(exc)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors: unknown option, bad value
        show = getattr(exc, "show", None)
        if show is None:
            raise
        show()
        sys.exit(int(getattr(exc, "exit_code", 2)))
    except Exception as exc:
        failure = escaped_failure(exc)  # a driver error no library code classified
        if failure is None:
            raise
        _stop(failure)
