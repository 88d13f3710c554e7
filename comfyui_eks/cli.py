"""`comfyui-eks`: the command users live in.

Every sub-command lives in a module of this package (COMMANDS) that exposes
`register(subparsers, name) -> argparse.ArgumentParser`: it adds the parser for command
`name` and sets `func` as that parser's default (a callable taking the parsed arguments and
returning an exit code). One module may serve several commands (deploy/destroy). Modules are imported only
when their command runs, so `comfyui-eks cost` never pays for boto3 or cdktf.

Exit codes: 0 ok, 1 failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> module (comfyui_eks.<module>) that registers it
COMMANDS: dict[str, str] = {
    "deploy": "deploy",
    "destroy": "deploy",
    "status": "status",
    "outputs": "status",
    "invoke": "invoke",
    "models": "models",
    "cost": "cost",
    "jobs": "jobs",
}

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad usage or configuration: printed as one line per problem, exit code 2."""

    def __init__(self, *lines: str):
        super().__init__("\n".join(lines))
        self.lines = list(lines)


class CommandFailed(Exception):
    """The command ran and failed: printed as one line per problem, exit code 1."""

    def __init__(self, *lines: str):
        super().__init__("\n".join(lines))
        self.lines = list(lines)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comfyui-eks",
        description="ComfyUI on Amazon EKS: deploy, inspect and use it.",
        epilog="Exit codes: 0 ok, 1 failed, 2 bad usage or configuration.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in COMMANDS.items():
        if only is not None and name != only:
            # Other commands appear in --help without importing their modules.
            sub.add_parser(name, help=f"(see comfyui-eks {name} --help)", add_help=False)
            continue
        importlib.import_module(f"comfyui_eks.{module}").register(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(first if first in COMMANDS else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help, 2 for usage errors
        return int(exc.code or 0)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        for line in exc.lines:
            print(f"comfyui-eks {args.command}: {line}", file=sys.stderr)
        return EXIT_USAGE
    except CommandFailed as exc:
        for line in exc.lines:
            print(f"comfyui-eks {args.command}: {line}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"comfyui-eks {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
