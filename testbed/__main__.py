"""``python -m testbed VERB ...``.

``fit``/``validate``/``test``/``predict`` go to LightningCLI. Verbs that are not Trainer methods
(``study``, ``report``, ``vrev``) are dispatched beside it, each to a typed function via jsonargparse.

The contract for bad input: one ``testbed: error: ...`` line on stderr and exit status 2, never a traceback. Besides
the testbed's own errors (``testbed.errors``) and jsonargparse's, that covers the environment refusing what the
input asks for: a file or folder that cannot be read or written (``OSError``), text that is not UTF-8, and a size
too large to allocate. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from testbed.errors import TestbedError, check_nulls, environment_problem, hints_of, one_line, testbed_cause

__all__ = ["ORCHESTRATION_VERBS", "quiet_third_party", "refusing_nulls", "run_verb", "main"]

# verb -> "module:function"; imported lazily so `fit` does not pay for report/plotting imports.
ORCHESTRATION_VERBS = {
    "study": "testbed.study.runner:study_command",
    "report": "testbed.report:report_command",
    "vrev": "testbed.commands:vrev_command",
}


class _DropLightningTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def quiet_third_party() -> None:
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropLightningTips())
    # Lightning 2.6 on torch 2.13 warns about its own use of a deprecated torch pytree class on every run.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def refusing_nulls(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` (same signature and docstring, which jsonargparse reads) refusing ``null`` for a parameter whose type
    does not allow ``None`` (jsonargparse lets ``runs_dir: null`` through to a ``str`` parameter)."""

    @functools.wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        check_nulls(dict(inspect.signature(func).bind_partial(*args, **kwargs).arguments), "", hints_of(func))
        return func(*args, **kwargs)

    return checked


def run_verb(args: Sequence[str] | None = None) -> object:
    """Run one verb with its arguments (default: ``sys.argv[1:]``); raises ``TestbedError`` for bad input."""
    from_argv = args is None
    args = list(sys.argv[1:] if args is None else args)
    if args and args[0] in ORCHESTRATION_VERBS:
        from jsonargparse import CLI

        from testbed.io import install_yaml_loader

        install_yaml_loader()

        module_name, func_name = ORCHESTRATION_VERBS[args[0]].split(":")
        func = getattr(importlib.import_module(module_name), func_name)
        return CLI(refusing_nulls(func), args=args[1:], prog=f"testbed {args[0]}", exit_on_error=False)
    from testbed.cli import TestbedCLI

    return TestbedCLI(args=None if from_argv else args)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point; bad input prints one ``testbed: error: ...`` line and exits with status 2."""
    quiet_third_party()
    from jsonargparse import ArgumentError

    try:
        run_verb(argv)
    except (TestbedError, ArgumentError) as exc:
        print(f"testbed: error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        # jsonargparse wraps an error raised in a model's/datamodule's __init__ (e.g. ConfigError for k >= d) into a
        # ValueError listing union subtypes; report the TestbedError underneath as the one message.
        cause = testbed_cause(exc)
        message = one_line(cause) if cause is not None else environment_problem(exc)
        if message is None:
            raise
        print(f"testbed: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
