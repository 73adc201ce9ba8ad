"""One exception hierarchy for everything onnxopt reports to a user.

Each class carries the CLI exit code it maps to: 2 for bad usage or unreadable input,
1 for an optimization or validation failure.

Every message says what went wrong and where (the file, node or tensor: :func:`onnxopt.api.optimize`
puts the input path in front of messages that name no file) and what to do about it: each class has
a default piece of ``advice``, appended to the message unless the raise site gives a better one
(``advice="..."``) or says the message already tells (``advice=""``).
"""

from __future__ import annotations


class OnnxOptError(Exception):
    """Base of every error onnxopt raises on purpose."""

    exit_code = 1
    #: what a user can do about an error of this class, unless the raise site says better
    advice = ""

    def __init__(self, message: str = "", *, advice: str | None = None) -> None:
        super().__init__(message)
        if advice is not None:
            self.advice = advice

    @property
    def message(self) -> str:
        """The message without the advice."""
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        message = self.message
        if self.advice and self.advice not in message:
            return f"{message}; {self.advice}" if message else self.advice
        return message


class UsageError(OnnxOptError):
    """Bad command line or bad API arguments."""

    exit_code = 2
    advice = "see onnxopt --help"


class BadModelError(OnnxOptError):
    """The model file is missing, unreadable, invalid or unsafe (e.g. external data outside its folder)."""

    exit_code = 2
    advice = "check that the path points at a complete ONNX model (export or download it again if it is damaged)"


class BadDataError(OnnxOptError):
    """Calibration or validation data does not match the model's inputs."""

    exit_code = 2
    advice = ("give an .npz with one array per model input, named like the input, samples on axis 0 "
              "(README: Data files)")


class OutputError(OnnxOptError):
    """The output cannot be written (folder missing or not writable)."""

    exit_code = 2
    advice = "write to an existing folder you may write to, with room for the model"


class PassError(OnnxOptError):
    """A pass failed to run (a bug or an unsupported graph)."""

    exit_code = 1
    advice = ("leave the pass out (--passes lists the ones to run; onnxopt --list-passes shows them) and "
              "report the model with the output of -v")


class ValidationError(OnnxOptError):
    """A pass or the whole run failed its fidelity budget against onnxruntime."""

    exit_code = 1
    advice = ("if the difference is acceptable, loosen --rtol/--atol; otherwise run with --validate each, "
              "which rolls back the lossless pass responsible, and report the model")
