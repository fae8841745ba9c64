"""One error path for the command line: `error: ...` on one line, the right exit status, no traceback.

Exit status 2 for usage errors (a bad argument or recipe value; a missing, empty or malformed input;
an unknown model or task), 1 for failures while working, 130 on Ctrl-C. `--debug` or `LM2VEC_DEBUG=1`
re-raises, so the traceback shows.

typer bundles its own copy of click (typer >= 0.17), so click's exception classes are looked up in
both the `click` package and typer's copy.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

import click
import typer
from rich.console import Console
from rich.markup import escape

USAGE, FAILURE, INTERRUPTED = 2, 1, 130
stderr = Console(stderr=True, soft_wrap=True)  # soft wrap: a long path never splits a message over lines


def _click_classes(name: str) -> tuple[type, ...]:
    """`name` from click and from typer's bundled click (the same class when typer uses plain click)."""
    modules = [click.exceptions, typer]
    try:
        modules.append(importlib.import_module("typer._click.exceptions"))
    except ImportError:  # a typer that uses the click package itself
        pass
    found = {cls for cls in typer.BadParameter.__mro__ if cls.__name__ == name}
    found |= {getattr(m, name) for m in modules if isinstance(getattr(m, name, None), type)}
    return tuple(found)


def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("LM2VEC_DEBUG", "").lower() in ("1", "true", "yes")


def print_error(message: str, hint: str = "") -> None:
    stderr.print(f"[red]error:[/red] {escape(message)}" + (f" [dim]({escape(hint)})[/dim]" if hint else ""))


def _usage_message(error) -> str:
    """click's message for a usage error, plus where to read about the command."""
    message = error.format_message()
    ctx = getattr(error, "ctx", None)
    return message + (f" (see '{ctx.command_path} --help')" if ctx is not None else "")


def usage_errors() -> tuple[type, ...]:
    """Mistakes in what the user asked for: bad recipes, data, inputs, model or task names."""
    from lm2vec.core.bidirectional import BidirectionalError
    from lm2vec.core.models import ModelNotFoundError
    from lm2vec.data.errors import DataError
    from lm2vec.training.recipe import RecipeError

    return RecipeError, DataError, ModelNotFoundError, BidirectionalError, ValueError, FileNotFoundError


def run_cli(app: Callable, argv: list[str]) -> int:
    """Run the typer app and turn every outcome into an exit status."""
    debug = debug_requested(argv)
    try:
        result = app(standalone_mode=False)
    except _click_classes("Abort") + (KeyboardInterrupt,):
        result = INTERRUPTED
    except _click_classes("ClickException") as error:  # click's own message says it all, even with --debug
        if type(error).__name__ == "NoArgsIsHelpError":  # bare `lm2vec`: the help is the answer
            error.show()
        elif isinstance(error, _click_classes("UsageError")):
            print_error(_usage_message(error))
        else:
            print_error(error.format_message())
        return error.exit_code
    except usage_errors() as error:
        if debug:
            raise
        print_error(str(error))
        return USAGE
    except Exception as error:
        if debug:
            raise
        print_error(f"{type(error).__name__}: {error}", hint="run with --debug to see the traceback")
        return FAILURE
    if result == INTERRUPTED:  # typer turns Ctrl-C into Exit(130), which click returns as a value
        stderr.print("[yellow]interrupted[/yellow]: finished work is kept (`encode` and `demo` resume when run "
                     "again, `train` with --resume)")
    return result if isinstance(result, int) else 0


def exit_with(app: Callable) -> None:
    sys.exit(run_cli(app, sys.argv[1:]))
