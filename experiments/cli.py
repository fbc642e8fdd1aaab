"""The `moelora` command line. Each sub-command lives in its own module and is registered here.

Sub-commands are loaded lazily: `moelora --help` lists them from their modules' source (their docstrings,
read with `ast`, nothing imported), and `moelora NAME` imports only NAME's module, so no command pays for
torch or transformers unless it uses them.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

# name -> (module in this package, function); one line each.
LAZY: dict[str, tuple[str, str]] = {
    "params": ("params", "params_command"),
    "verify": ("verify_cmd", "verify_command"),
    "train": ("train_cmd", "train_command"),
    "bounds": ("bounds_cmd", "bounds_command"),
}


def _docstring(module: str, function: str) -> str:
    """The docstring of `function` in this package's `module`, from its source (no import)."""
    spec = importlib.util.find_spec(f"{__package__}.{module}")
    if spec is None or spec.origin is None:
        return ""
    with open(spec.origin, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return ast.get_docstring(node) or ""
    return ""


def _load(name: str) -> Any:
    """The click command (typer's) of LAZY command `name`, its module imported now."""
    module, function = LAZY[name]
    fn = getattr(importlib.import_module(f".{module}", __package__), function)
    one = typer.Typer(add_completion=False)
    one.command(name)(fn)
    return typer.main.get_command(one)


# The context, formatter and command types of TyperGroup's methods are those of the click that typer
# uses: the `click` package up to typer 0.2x, its private vendored copy (`typer._click`) since. They
# are spelled `Any` here so that the overrides fit either.
class LazyGroup(TyperGroup):
    """A Typer group whose LAZY commands are imported on first use; listings read their docstrings."""

    _listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *(n for n in LAZY if n not in self.commands)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in LAZY and cmd_name not in self.commands:
            if self._listing:  # the help listing needs the one-line help only
                return TyperCommand(cmd_name, help=_docstring(*LAZY[cmd_name]))
            self.add_command(_load(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_help(self, ctx: Any, formatter: Any) -> Any:
        self._listing = True
        try:
            return super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    name="moelora",
    cls=LazyGroup,
    help="Verify MoE-LoRA claims, count parameters, fine-tune adapters and measure their bounds.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _group() -> None:
    """Keeps `moelora` a group of sub-commands (Typer collapses a one-command app into the command)."""


@app.command("claims")
def claims(
    profile: str = typer.Option("ci", help="Hypothesis profile: dev, ci or thorough."),
    json_out: str | None = typer.Option(
        None, "--json", help="Also write the results to this JSON file."
    ),
) -> None:
    """Check every registered claim and print one line each (holds / refuted, cases, max error)."""
    from proofs_numeric.__main__ import main

    raise typer.Exit(main(["--profile", profile, *(["--json", json_out] if json_out else [])]))


@app.command(
    "study",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def study(ctx: typer.Context) -> None:
    """Seeds x architectures x tasks x budgets: train, measure, paired statistics (--help for options)."""
    from .study.cli import main

    raise typer.Exit(main(list(ctx.args)))


@app.command(
    "demo",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def demo(ctx: typer.Context) -> None:
    """What `make demo` runs: `moelora study --preset demo` (every architecture x 5 seeds; runs/demo)."""
    from .study.cli import main

    raise typer.Exit(main(["--preset", "demo", *ctx.args]))


if __name__ == "__main__":
    app()
