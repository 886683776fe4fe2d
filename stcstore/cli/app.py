"""The typer application and the options every command shares."""

from __future__ import annotations

import logging

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

__all__ = ["app"]


class _PlainHelp:
    """Help as users read it: on/off and counting flags without a value type, usage names in capitals.

    typer's rich help prints a type for every option, flags included (`--json <bool>`, `-v <int>`),
    and required arguments as `{text}` in usage lines.
    """

    def format_help(self, ctx, formatter) -> None:
        for param in self.get_params(ctx):
            if isinstance(param, TyperOption) and (param.is_flag or param.count):
                param.metavar = ""  # typer shows a set metavar instead of the type
        super().format_help(ctx, formatter)

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = super().collect_usage_pieces(ctx)
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = (param.metavar or param.name or "").upper() + ("..." if param.nargs != 1 else "")
                name = name if param.required else f"[{name}]"
                pieces = [name if piece in param.get_usage_pieces(ctx) else piece for piece in pieces]
        return pieces


class _Command(_PlainHelp, TyperCommand):
    pass


class _Group(_PlainHelp, TyperGroup):
    pass


class _Typer(typer.Typer):
    """The app: every command gets the plain-help command class."""

    def command(self, *args, cls=None, **kwargs):
        return super().command(*args, cls=cls or _Command, **kwargs)


app = _Typer(
    cls=_Group,
    name="stcstore",
    help="Sparsify-then-Classify on cached transformer activations: extract, probe, predict, explain.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"stcstore {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", is_eager=True, expose_value=False, callback=_print_version,
                                 help="Print the version and exit."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="Log progress details to stderr (-vv: debug)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log only warnings and errors."),
) -> None:
    """Sparsify-then-Classify on cached transformer activations."""
    from .common import command_process_settings, setup_logging

    # before logging set-up imports libraries that start threads (NumPy's BLAS)
    command_process_settings(ctx.invoked_subcommand)
    # errors must stay one line on stderr, so routine messages need -v
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    setup_logging(logging.ERROR if quiet else level)
