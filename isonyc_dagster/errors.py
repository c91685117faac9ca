"""The one root of the project's errors.

Every error the project raises on purpose derives from ``IsonycError``, so the CLI and the Dagster layer can turn
any of them into one clear line. Most also keep the standard base they always had (``ValueError`` for bad input,
``RuntimeError`` for a failing service or store), so callers that catch those keep working.
"""

from __future__ import annotations


class IsonycError(Exception):
    """Base of every error the project raises on purpose; its message names the problem and the fix."""
