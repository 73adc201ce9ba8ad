"""What a pass may know about the run: input shapes, feeds, calibration data, seed, shared analyses."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxopt.data import Feed


@dataclass
class PassContext:
    """Shared state handed to every pass.

    - ``model``: the ModelProto the pass's graph was imported from (read-only; the snapshot);
    - ``input_shapes``: concrete shapes the model validated with (``--input-shape`` or probed);
    - ``validation_feeds``: feeds the manager validates with (do not calibrate on them);
    - ``calibration``: a callable yielding calibration feeds one at a time (streamed), or None;
    - ``seed``: for anything random; ``options``: free-form run options (e.g. fold size limit);
    - ``cache``: analyses shared between passes; cleared whenever a pass modifies the graph;
    - ``model_releasable``: the manager keeps the model on disk for a rollback and holds no other
      reference, so a pass with ``releases_input`` may drop ``model`` once it has its own copy.
    """

    model: onnx.ModelProto
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    validation_feeds: Sequence[Feed] = ()
    calibration: Callable[[], Iterator[Feed]] | None = None
    calibration_source: str = "synthetic"
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    model_releasable: bool = False

    def rng(self, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, salt])

    def calibration_feeds(self) -> Iterator[Feed]:
        """Calibration feeds, streamed; falls back to the validation feeds (synthetic runs)."""
        if self.calibration is not None:
            yield from self.calibration()
        else:
            yield from self.validation_feeds

    def invalidate(self) -> None:
        self.cache.clear()
