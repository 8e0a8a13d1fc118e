"""The ``vla-runtime`` command line."""

import argparse
import sys

from vla_runtime import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vla-runtime")
    parser.add_argument("--version", action="version", version=__version__)
    parser.parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
