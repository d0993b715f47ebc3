"""The ``imctl`` entry point: parse the command line, run the verb, and turn a bad
configuration into its list of problems (exit 2) instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from control.cli.context import EXIT_USAGE
from control.cli.parser import build_parser
from control.common.errors import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["load"]:  # the generator parses its own flags (imctl load --help)
        from control.cli.load import hand_over

        return hand_over(words[1:])
    args = build_parser().parse_args(words)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print("imctl: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
