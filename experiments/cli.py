"""The `moelora` command line. Each sub-command lives in its own module and is registered here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="moelora",
    help="Verify MoE-LoRA claims, count parameters, fine-tune adapters and measure their bounds.",
    no_args_is_help=True,
    add_completion=False,
)


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


# Sub-commands registered by their modules (one line each).
app.command("params")(__import__("experiments.params", fromlist=["_"]).params_command)
app.command("verify")(__import__("experiments.verify_cmd", fromlist=["_"]).verify_command)
app.command("train")(__import__("experiments.train_cmd", fromlist=["_"]).train_command)
app.command("demo")(__import__("experiments.demo", fromlist=["_"]).demo_command)
app.command("bounds")(__import__("experiments.bounds_cmd", fromlist=["_"]).bounds_command)


if __name__ == "__main__":
    app()
