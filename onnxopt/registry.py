"""Name -> pass class lookup over the built-in passes listed in ``onnxopt.passes``."""

from __future__ import annotations

from typing import Any

from onnxopt.errors import UsageError
from onnxopt.passes_api import Pass


def builtin_passes() -> dict[str, type[Pass]]:
    from onnxopt import passes

    return {cls.name: cls for cls in passes.BUILTIN_PASSES}


def default_pipeline() -> list[str]:
    from onnxopt import passes

    return list(passes.DEFAULT_PIPELINE)


def make_pass(name: str, **options: Any) -> Pass:
    """Instantiate a built-in pass by its CLI name."""
    table = builtin_passes()
    if name not in table:
        raise UsageError(f"unknown pass {name!r}; available: {', '.join(sorted(table))}")
    try:
        return table[name](**options)
    except TypeError as exc:
        raise UsageError(f"pass {name!r}: bad options {options}: {exc}") from None


def make_pipeline(names: list[str] | None = None) -> list[Pass]:
    return [make_pass(n) for n in (names if names is not None else default_pipeline())]
