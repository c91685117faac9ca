"""The ``isonyc`` command line: one parser (``main``); each sub-command's work lives in its own module."""

from isonyc_dagster.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
