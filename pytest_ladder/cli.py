"""The `ladder` console script (also `python -m pytest_ladder`): a thin dispatcher; each subcommand lives with the
module that owns it."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, function, help). Each function takes argv (list[str]) and returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "new": ("pytest_ladder.new_claim", "main", "start a claim: an unsealed prereg with every field explained (--from "
            "RUNG: a variant of that rung; --kind expert-weights|expert-outputs|router: your compressor through a "
            "generic rung)"),
    "seal": ("pytest_ladder.seal", "seal_main", "validate prereg tau.json files, then write their SHA-256 seals"),
    "verify": ("pytest_ladder.seal", "verify_main", "exit 0 only when every tau.json holds its seal and the schema"),
    "schema": ("pytest_ladder.prereg_schema", "main", "print the prereg JSON Schema (--markdown: its reference page)"),
    "scoreboard": ("pytest_ladder.scoreboard", "main", "print the ladder table from an archive (markdown or JSON)"),
    "model": ("pytest_ladder.models.embedded", "main", "build or locate the embedded default model (ladder model build)"),
    "theorems": ("pytest_ladder.theorems", "main", "status grid of the Lean kill theorems"),
    "archive": ("pytest_ladder.archive", "check_main", "ladder archive check [DIR]: every record matches the schema"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: ladder [--version] COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run `ladder COMMAND --help` for a command's options; `python -m pytest_ladder` is the same command.",
              "`ladder help --markdown` prints every command's help as one page (docs/cli.md)."]
    return "\n".join(lines)


# commands whose own subcommands get a section in the CLI reference
SUBCOMMANDS: dict[str, tuple[str, ...]] = {"model": ("build", "path")}
HELP_WIDTH = 100  # the terminal width argparse wraps the reference's help texts to


def help_text(argv: list[str]) -> str:
    """What `ladder ARGV --help` prints, wrapped at HELP_WIDTH columns whatever the terminal."""
    import contextlib
    import io
    import os

    out = io.StringIO()
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_WIDTH)
    try:
        with contextlib.redirect_stdout(out):
            try:
                main([*argv, "--help"])
            except SystemExit:  # argparse's --help exits
                pass
    finally:
        if columns is None:
            os.environ.pop("COLUMNS")
        else:
            os.environ["COLUMNS"] = columns
    return out.getvalue().rstrip("\n")


def cli_markdown() -> str:
    """The CLI reference (docs/cli.md): the command list and every subcommand's --help, as printed."""
    lines = ["# The `ladder` command", "",
             "<!-- generated from the commands' --help by `ladder help --markdown`: change the help texts, then "
             "regenerate -->", "",
             "`ladder` is installed with the package; `python -m pytest_ladder` is the same command.", "",
             "```text", usage(), "```"]
    for name in COMMANDS:
        for argv in ([name], *([name, sub] for sub in SUBCOMMANDS.get(name, ()))):
            lines += ["", f"## ladder {' '.join(argv)}", "", "```text", help_text(argv), "```"]
    return "\n".join(lines) + "\n"


def version() -> str:
    """`pytest-ladder X.Y.Z` with the version of the package imported (pytest_ladder.__version__)."""
    from pytest_ladder import __version__

    return f"pytest-ladder {__version__}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        if argv[1:] == ["--markdown"]:
            print(cli_markdown(), end="")
        else:
            print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(version())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ladder: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[name]
    return int(getattr(importlib.import_module(module), function)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
