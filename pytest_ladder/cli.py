"""The `ladder` console script: a thin dispatcher; each subcommand lives with the module that owns it."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, function, help). Each function takes argv (list[str]) and returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "seal": ("pytest_ladder.seal", "seal_main", "write the SHA-256 seal into prereg tau.json files"),
    "verify": ("pytest_ladder.seal", "verify_main", "exit 0 only when every given tau.json seal holds"),
    "scoreboard": ("pytest_ladder.scoreboard", "main", "print the ladder table from an archive (markdown or JSON)"),
    "model": ("pytest_ladder.models.embedded", "main", "build or locate the embedded default model (ladder model build)"),
    "theorems": ("pytest_ladder.theorems", "main", "status grid of the Lean kill theorems"),
    "archive": ("pytest_ladder.archive", "check_main", "ladder archive check [DIR]: every record matches the schema"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: ladder COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run `ladder COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ladder: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[name]
    return int(getattr(importlib.import_module(module), function)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
