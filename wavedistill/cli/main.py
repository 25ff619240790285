"""``wavedistill`` command line: distill, kd, cache-teacher, layers, compare, lab, analyze, eval, lm-eval, make-tasks,
generate, report, bench, demo, mixers. The parser is :mod:`.parser`, the commands :mod:`.commands`."""

from __future__ import annotations

import sys

from transformers.utils import logging as hf_logging

from ..errors import WavedistillError
from .parser import build_parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    # Keep stderr for messages: weight-loading progress bars would bury a one-line error.
    hf_logging.disable_progress_bar()
    try:
        args.fn(args)
    except WavedistillError as e:
        print(f"wavedistill: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wavedistill: interrupted; a run keeps its last checkpoint (--resume continues from it)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
