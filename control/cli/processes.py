"""``imctl up|scheduler|access|controller``: run the processes (built by control.launch)."""

from __future__ import annotations

import argparse
import asyncio

from control.cli.context import EXIT_USAGE, default_local_config, fail, load
from control.common.logs import setup_logging
from control.settings import Settings


def log_format(args: argparse.Namespace, settings: Settings) -> str:
    """``--output json`` asks for JSON logs too; else the config's ``log_format``."""
    return "json" if getattr(args, "output", "table") == "json" else settings.log_format


def cmd_scheduler(args: argparse.Namespace) -> int:
    from control.launch import run_scheduler

    settings = load(args.config)
    setup_logging(settings.log_level, log_format(args, settings))
    return asyncio.run(run_scheduler(settings))


def cmd_access(args: argparse.Namespace) -> int:
    if args.access_command is not None:
        return int(args.access_func(args))
    if not args.config or not args.node_id:
        raise SystemExit(
            fail(
                "access: give --config FILE --node-id ID to run a node, or 'drain'/'undrain' NODE",
                EXIT_USAGE,
            )
        )
    from control.launch import run_access

    settings = load(args.config)
    settings.access.node(args.node_id)  # a clear error before anything starts
    setup_logging(settings.log_level, log_format(args, settings))
    return asyncio.run(run_access(settings, args.node_id))


def cmd_controller(args: argparse.Namespace) -> int:
    from control.launch import run_controller

    settings = load(args.config)
    setup_logging(settings.log_level, log_format(args, settings))
    return asyncio.run(run_controller(settings))


def cmd_up(args: argparse.Namespace) -> int:
    from control.launch import run_local

    path = args.config or str(default_local_config())
    settings = load(path)
    level = "warning" if settings.log_level == "info" else settings.log_level
    setup_logging(level, log_format(args, settings))
    config_path = None if args.config is None else path
    return asyncio.run(run_local(settings, args.output == "json", config_path))
