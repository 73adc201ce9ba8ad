"""The pass contract: what a rewrite pass is, what it returns, and the kinds of change it may make."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from onnxopt.validate import Budget

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

    from onnxopt.context import PassContext


class Kind(enum.Enum):
    """How far a pass may move the model's answers.

    EXACT   - no arithmetic changes (cleanup, renaming, dead code): outputs must be equal.
    NUMERIC - float arithmetic may be reassociated (folding, BN fusion): outputs within a tight tolerance.
    LOSSY   - answers change on purpose (quantization, pruning): outputs within a fidelity budget.
    """

    EXACT = "exact"
    NUMERIC = "numeric"
    LOSSY = "lossy"

    @property
    def lossless(self) -> bool:
        return self is not Kind.LOSSY


@dataclass
class PassResult:
    """What a pass did. ``modified`` must be honest: False means the graph is untouched."""

    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)


class Pass(ABC):
    """A graph rewrite. Subclasses set ``name`` (CLI spelling) and ``kind`` and implement ``run``.

    A pass never reads files, parses arguments or prints; options are constructor arguments, and
    everything it needs from the run (shapes, feeds, activation statistics) comes from the context.
    """

    name: ClassVar[str]
    kind: ClassVar[Kind]
    #: minimum default-domain opset this pass needs; the manager upgrades the model first
    min_opset: ClassVar[int] = 0
    #: whether the graph should arrive with ONNX-inferred dtypes/shapes (False: the pass infers its own)
    needs_shapes: ClassVar[bool] = True
    #: LOSSY passes: the fidelity budget this pass is validated against unless the user gives one
    #: (None: the run's default budget). A pass whose loss is larger by nature (pruning without
    #: fine-tuning) declares a looser one here; the user's --min-* flags still override it.
    budget: Budget | None = None
    #: the pass builds its own full copy of the weights early (quantize-int8). For a model above the
    #: manager's spill size the rollback snapshot then goes to disk *before* the pass runs, and
    #: ``context.model_releasable`` tells the pass it may drop the model it was given (set
    #: ``context.model = None`` and stop referring to its tensors), so two copies are never held.
    releases_input: ClassVar[bool] = False

    @abstractmethod
    def run(self, graph: gs.Graph, context: PassContext) -> PassResult:
        """Rewrite ``graph`` in place and say what changed."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kind={self.kind.value})"
