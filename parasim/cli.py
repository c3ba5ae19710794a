"""``parasim``: one parser for every command; bad input exits 2 with one clear line, never a
traceback."""

from __future__ import annotations

import argparse
import sys

from simulator.errors import UserError


def main(argv: list[str] | None = None) -> int:
    from simulator import limits

    args = parser().parse_args(argv)
    try:
        with limits.lifted(getattr(args, "no_limits", False)):
            return args.func(args)
    except _user_errors() as e:
        print(f"parasim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's input, not a bug: one line and exit 2 (evaluated only when
    an exception is being handled, so the report code loads only then)."""
    from reports import ReportError

    return (UserError, ReportError)


class _Version(argparse.Action):
    """``--version``: worked out when asked (a checkout's commit takes a ``git`` call)."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001, ANN204
        from simulator.predict import code_version

        print(f"parasim {code_version()}")
        parser.exit()


def parser() -> argparse.ArgumentParser:
    from executor.commands import add_parsers as executor_commands
    from reports.cli import add_parser as report_command
    from simulator.cli import add_parsers as simulator_commands

    p = argparse.ArgumentParser(prog="parasim", description="Predict (and later measure) the "
                                "throughput of parallel training plans.")
    p.add_argument("--version", action=_Version, nargs=0,
                   help="print parasim's version (and the commit of a checkout) and exit")
    sub = p.add_subparsers(dest="command", required=True)
    simulator_commands(sub)
    executor_commands(sub)
    report_command(sub)
    for command in sub.choices.values():  # every command that reads a scenario
        if any(a.dest == "scenario" for a in command._actions):
            command.add_argument("--no-limits", action="store_true",
                                 help="lift the limits on devices, layers and simulated events "
                                      "(docs/reliability.md lists them and why)")
    # search --validate runs the picks: the executor's part of the command
    search = sub.choices["search"]
    plain = search.get_default("func")
    search.set_defaults(func=lambda args: _search(args, plain))
    return p


def _search(args: argparse.Namespace, plain) -> int:  # noqa: ANN001
    if args.validate is None:
        return plain(args)
    from executor.commands import cmd_search_validate

    return cmd_search_validate(args)


if __name__ == "__main__":
    sys.exit(main())
