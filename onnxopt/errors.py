"""One exception hierarchy for everything onnxopt reports to a user.

Each class carries the CLI exit code it maps to: 2 for bad usage or unreadable input,
1 for an optimization or validation failure.
"""

from __future__ import annotations


class OnnxOptError(Exception):
    """Base of every error onnxopt raises on purpose."""

    exit_code = 1


class UsageError(OnnxOptError):
    """Bad command line or bad API arguments."""

    exit_code = 2


class BadModelError(OnnxOptError):
    """The model file is missing, unreadable, invalid or unsafe (e.g. external data outside its folder)."""

    exit_code = 2


class BadDataError(OnnxOptError):
    """Calibration or validation data does not match the model's inputs."""

    exit_code = 2


class OutputError(OnnxOptError):
    """The output cannot be written (folder missing or not writable)."""

    exit_code = 2


class PassError(OnnxOptError):
    """A pass failed to run (a bug or an unsupported graph)."""

    exit_code = 1


class ValidationError(OnnxOptError):
    """A pass or the whole run failed its fidelity budget against onnxruntime."""

    exit_code = 1
