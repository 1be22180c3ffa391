"""`emotionclip` command line. Each sub-command group lives in its own module and
keeps heavy imports (torch, transformers, ultralytics) inside the commands, so
`emotionclip --help` is fast."""

from __future__ import annotations

import typer

from emotionclip.core.env import configure_environment

configure_environment()

app = typer.Typer(
    help="EmotionCLIP: build the TV dataset, pre-train, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _register() -> None:
    import importlib

    for module, name, help_text in [
        ("emotionclip.cli.stage", "stage", "Run one pipeline stage on one video, without a server."),
        ("emotionclip.cli.manifests", "manifests", "List the manifest generations, roll back to an older one."),
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
        else:  # a single command
            app.command(name=name, help=help_text)(sub)


_register()

if __name__ == "__main__":
    app()
