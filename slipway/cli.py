"""The command line every job shares: `--config PATH` and repeatable `--set dotted.key=value`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TypeVar

from slipway.config import ConfigError, JobConfig, load_config
from slipway.errors import SlipwayError

C = TypeVar("C", bound=JobConfig)


class JobFailed(SlipwayError):
    """A job stopped for a reason the user can act on; the message says what and how to fix it."""


def run_job(model: type[C], main: Callable[[C], object], description: str,
            argv: list[str] | None = None) -> None:
    """Parse arguments, load and validate the config, run `main`; exit 2 on config errors."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", dest="configs", action="append", default=[],
                        metavar="PATH", help="YAML config file (defaults apply when omitted); "
                        "repeat it to layer files, later ones over earlier ones")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. storage.root=/tmp/x")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(model, args.configs, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        main(cfg)
    except ConfigError as exc:  # a file the config names (e.g. behaviour checks) is invalid
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except SlipwayError as exc:  # JobFailed from a job, or the library's own error
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
