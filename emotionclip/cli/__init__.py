"""`emotionclip` command line. Each sub-command group lives in its own module and
keeps heavy imports (torch, transformers, ultralytics) inside the commands, so
`emotionclip --help` is fast.

Errors that are the user's to fix (a bad catalog key, missing manifests, a file
that is not a checkpoint, ...: `USER_ERRORS`) print one `error: ...` line and
exit 2 from every command, in one place (`_Group.invoke`); `emotionclip --debug`
or `EMOTIONCLIP_DEBUG=1` shows the traceback instead. Commands may still handle
their own errors first (with their own wording or exit code).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click
import typer
from typer.core import TyperGroup

from emotionclip.core.env import configure_environment

configure_environment()

DEBUG_ENV = "EMOTIONCLIP_DEBUG"
_DEBUG_KEY = "emotionclip.debug"

# (module, class) of the exceptions that mean "what you gave is unusable", not a bug.
# Looked up among the modules already imported (an exception of a module that was
# never imported cannot be raised), so `--help` imports none of them.
USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("emotionclip.core.catalog", "CatalogError"),  # a bad catalog file, key or value
    ("emotionclip.core.schemas", "SchemaError"),  # manifests or tables that do not match their schema
    ("emotionclip.core.manifest_store", "ManifestShrinkError"),
    ("emotionclip.core.errors", "ModelNotAvailable"),  # offline without the weights (the message says how)
    ("emotionclip.training.errors", "TrainingInputError"),
    ("emotionclip.evaluation.datasets.base", "DatasetLayoutError"),
    ("builtins", "FileNotFoundError"),  # an input path that does not exist
)


def debug_enabled(ctx: click.Context | None = None) -> bool:
    """True under `emotionclip --debug` or EMOTIONCLIP_DEBUG=1: show tracebacks."""
    if os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    ctx = ctx or click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().meta.get(_DEBUG_KEY))


def user_error_types() -> tuple[type[BaseException], ...]:
    out = []
    for module, name in USER_ERRORS:
        mod = sys.modules.get(module)
        cls = getattr(mod, name, None) if mod is not None else None
        if isinstance(cls, type) and issubclass(cls, BaseException):
            out.append(cls)
    return tuple(out)


def one_line(err: BaseException) -> str:
    """The exception's message on one line (an OSError as 'what: path')."""
    if isinstance(err, OSError) and err.strerror:
        text = f"{err.strerror.lower()}: {err.filename}" if err.filename else err.strerror
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


class _Group(TyperGroup):
    """The root group: user errors of any sub-command become one line and exit 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except user_error_types() as e:
            if debug_enabled(ctx):
                raise
            typer.echo(f"error: {one_line(e)}", err=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_Group,
    help="EmotionCLIP: build the TV dataset, pre-train, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    debug: bool = typer.Option(
        False, "--debug",
        help=f"Show the traceback of an error instead of one line (also: {DEBUG_ENV}=1)."),
) -> None:
    """EmotionCLIP: build the TV dataset, pre-train, evaluate."""
    ctx.meta[_DEBUG_KEY] = debug


def _register() -> None:
    import importlib

    for module, name, help_text in [
        ("emotionclip.cli.stage", "stage", "Run one pipeline stage on one video, without a server."),
        ("emotionclip.cli.manifests", "manifests", "List the manifest generations, roll back to an older one."),
        ("emotionclip.cli.dataset", "dataset", "The dataset across runs: status, list, remove a video."),
        ("emotionclip.cli.models", "models", "Build the tiny models, pre-fetch the paper's weights."),
        ("emotionclip.cli.train", "train", "Pre-train EmotionCLIP."),
        ("emotionclip.cli.eval", "eval", "Linear-probe evaluation on the downstream benchmarks."),
        ("emotionclip.cli.catalog", "catalog", "Inspect and validate the data catalog."),
        ("emotionclip.cli.viz", "viz", "Plots of the model: HMN and CLS attention maps."),
    ]:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue  # group not built yet
        sub = getattr(mod, "app")
        if isinstance(sub, typer.Typer):
            app.add_typer(sub, name=name, help=help_text)
        else:  # a single command; its module's HELP (when it has one) is the longer help
            app.command(name=name, help=getattr(mod, "HELP", None) or help_text)(sub)


_register()

if __name__ == "__main__":
    app()
