"""Model inputs and the data fed to them: input specs, `.npz` files, synthetic feeds.

`.npz` contract (GUIDE §5): one key per model input; array ``[K, *feed_shape]`` where entry i along
axis 0 is exactly what is fed for that input in inference i. An array with the input's own rank is
accepted too and split along axis 0 into batch-1 feeds.
"""

from __future__ import annotations

import logging
import os
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxopt.errors import BadDataError, UsageError

log = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]
Dim = int | str | None


@dataclass(frozen=True)
class InputSpec:
    """One graph input: its name, numpy dtype, and declared shape (ints, symbolic names or None)."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...] | None  # None: rank unknown

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) and d >= 0 for d in self.shape)

    def describe(self) -> str:
        dims = "?" if self.shape is None else ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The inputs a user must feed (graph inputs that are not initializers, as in IR < 4 models)."""
    init_names = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        ttype = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise BadDataError(f"input {vi.name!r} is not a tensor (sequence/map inputs are not supported)")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type))
        shape: tuple[Dim, ...] | None = None
        if ttype.HasField("shape"):
            dims: list[Dim] = []
            for d in ttype.shape.dim:
                if d.HasField("dim_value") and d.dim_value >= 0:
                    dims.append(int(d.dim_value))
                elif d.HasField("dim_param") and d.dim_param:
                    dims.append(d.dim_param)
                else:  # no value, or a negative one (Paddle writes -1 for "dynamic")
                    dims.append(None)
            shape = tuple(dims)
        specs.append(InputSpec(vi.name, dtype, shape))
    return specs


def parse_input_shapes(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``NAME=1,3,224,224`` strings (CLI ``--input-shape``) into a dict."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, dims = item.rpartition("=")
        if not sep or not name:
            raise UsageError(f"--input-shape {item!r}: expected NAME=D1,D2,... (e.g. input=1,3,224,224)")
        try:
            shape = tuple(int(d) for d in dims.split(",") if d.strip() != "")
        except ValueError:
            raise UsageError(f"--input-shape {item!r}: dimensions must be integers") from None
        if any(d < 0 for d in shape):
            raise UsageError(f"--input-shape {item!r}: dimensions must be non-negative")
        shapes[name] = shape
    return shapes


def check_shape_overrides(specs: Sequence[InputSpec], shapes: dict[str, tuple[int, ...]]) -> None:
    """Every override must name an input and agree with its rank and static dims."""
    by_name = {s.name: s for s in specs}
    for name, shape in shapes.items():
        if name not in by_name:
            known = ", ".join(by_name) or "(none)"
            raise UsageError(f"--input-shape names {name!r}, which is not a model input; inputs are: {known}")
        spec = by_name[name]
        if spec.shape is None:
            continue
        if len(shape) != len(spec.shape):
            raise UsageError(
                f"--input-shape {name}: rank {len(shape)} does not match the model's {spec.describe()}"
            )
        for i, (want, got) in enumerate(zip(spec.shape, shape)):
            if isinstance(want, int) and want != got:
                raise UsageError(f"--input-shape {name}: dim {i} is fixed to {want} by the model, got {got}")


def concrete_shape(spec: InputSpec, fill: int, batch: int = 1) -> tuple[int, ...]:
    """Spec shape with batch-like dims (axis 0 or names like 'batch', 'N') set to ``batch``, others ``fill``."""
    if spec.shape is None:
        raise BadDataError(f"input {spec.name!r} has unknown rank; give it with --input-shape NAME=D1,D2,...",
                       advice="")
    out = []
    for i, d in enumerate(spec.shape):
        if isinstance(d, int) and d >= 0:
            out.append(d)
        elif is_batch_like(d, i):
            out.append(batch)
        else:
            out.append(fill)
    return tuple(out)


def is_batch_like(dim: Dim, axis: int) -> bool:
    if isinstance(dim, str):
        low = dim.lower()
        if any(k in low for k in ("batch", "bs")) or low in ("n", "b", "none", "unk__0"):
            return True
        if any(k in low for k in ("seq", "len", "height", "width", "time", "h", "w")):
            return False
    return axis == 0


def synthetic_array(
    spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator, int_high: int = 16
) -> np.ndarray:
    """Seeded data for one input: floats ~ N(0, 1), integers in [0, int_high), bools fair coin."""
    dt = spec.dtype
    if dt == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dt, np.integer):
        return rng.integers(0, max(1, int_high), size=shape).astype(dt)
    if np.issubdtype(dt, np.floating):
        return rng.standard_normal(size=shape).astype(dt)
    if dt.kind in ("U", "S", "O"):
        return np.array(["onnxopt"] * int(np.prod(shape)), dtype=object).reshape(shape)
    raise BadDataError(f"input {spec.name!r}: cannot make synthetic data of type {dt}",
                       advice="give real inputs with --validation-data (.npz)")


def synthetic_feeds(
    specs: Sequence[InputSpec],
    shapes: dict[str, tuple[int, ...]],
    count: int,
    seed: int,
    int_high: int = 16,
) -> list[Feed]:
    """``count`` seeded feeds with the given concrete shapes."""
    rng = np.random.default_rng(seed)
    return [
        {s.name: synthetic_array(s, shapes[s.name], rng, int_high) for s in specs} for _ in range(count)
    ]


# --------------------------------------------------------------------------- .npz files


def _open_npz(path: str | os.PathLike) -> np.lib.npyio.NpzFile:
    p = Path(os.fspath(path))
    if not p.is_file():
        raise BadDataError(f"{p}: no such data file", advice="check the path")
    try:
        return np.load(p, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BadDataError(f"{p}: not a readable .npz file ({exc})") from None


def _cast_input(arr: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    if arr.dtype == spec.dtype:
        return arr
    same_kind = (
        (np.issubdtype(arr.dtype, np.floating) and np.issubdtype(spec.dtype, np.floating))
        or (np.issubdtype(arr.dtype, np.integer) and np.issubdtype(spec.dtype, np.integer))
    )
    if not same_kind:
        raise BadDataError(f"{where}: input {spec.name!r} expects {spec.dtype}, the data has {arr.dtype}")
    return arr.astype(spec.dtype)


def _check_feed_shape(arr: np.ndarray, spec: InputSpec, where: str) -> None:
    if spec.shape is None:
        return
    if arr.ndim != len(spec.shape):
        raise BadDataError(
            f"{where}: input {spec.name!r} expects rank {len(spec.shape)} ({spec.describe()}), "
            f"one sample of the data has shape {tuple(arr.shape)}"
        )
    for i, (want, got) in enumerate(zip(spec.shape, arr.shape)):
        if isinstance(want, int) and want >= 0 and want != got:
            raise BadDataError(
                f"{where}: input {spec.name!r} dim {i} must be {want} ({spec.describe()}), "
                f"one sample of the data has shape {tuple(arr.shape)}"
            )


class NpzData:
    """Lazily reads samples from an ``.npz`` file, checked against the model's inputs.

    Arrays are memory-mapped where the file allows it (uncompressed); samples are produced one at
    a time so calibration can stream.
    """

    def __init__(self, path: str | os.PathLike, specs: Sequence[InputSpec]):
        self.path = str(path)
        self.specs = list(specs)
        npz = _open_npz(path)
        names = set(npz.files)
        missing = [s.name for s in self.specs if s.name not in names]
        if missing:
            raise BadDataError(
                f"{self.path}: no array for input(s) {', '.join(map(repr, missing))}; "
                f"the file has {', '.join(sorted(names)) or 'no arrays'}"
            )
        extra = names - {s.name for s in self.specs}
        if extra:
            log.warning("%s: ignoring arrays that are not model inputs: %s", self.path, ", ".join(sorted(extra)))
        self._arrays: dict[str, np.ndarray] = {}
        self._split_batch: dict[str, bool] = {}
        counts = set()
        for s in self.specs:
            try:
                arr = npz[s.name]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                raise BadDataError(f"{self.path}: cannot read array {s.name!r} ({exc})") from None
            rank = None if s.shape is None else len(s.shape)
            if rank is not None and arr.ndim == rank:
                self._split_batch[s.name] = True  # the input's own rank: split into batch-1 feeds
                counts.add(arr.shape[0] if rank > 0 else 1)
            elif rank is None or arr.ndim == rank + 1:
                self._split_batch[s.name] = False
                counts.add(arr.shape[0])
            else:
                raise BadDataError(
                    f"{self.path}: array {s.name!r} has shape {tuple(arr.shape)}; expected "
                    f"[K, *feed_shape] (rank {rank + 1}) or the input's own rank {rank} for {s.describe()}"
                )
            self._arrays[s.name] = arr
        if len(counts) != 1:
            raise BadDataError(f"{self.path}: inputs have different sample counts {sorted(counts)}")
        self.count = counts.pop()
        if self.count == 0:
            raise BadDataError(f"{self.path}: holds no samples")
        self.get(0)  # check dtypes and shapes up front, with a clear message

    def __len__(self) -> int:
        return self.count

    def get(self, i: int) -> Feed:
        feed: Feed = {}
        for s in self.specs:
            arr = self._arrays[s.name]
            sample = arr[i : i + 1] if self._split_batch[s.name] and arr.ndim > 0 else arr[i]
            if self._split_batch[s.name] and arr.ndim == 0:
                sample = arr
            where = f"{self.path} sample {i}"
            sample = _cast_input(np.asarray(sample), s, where)
            _check_feed_shape(sample, s, where)
            feed[s.name] = np.ascontiguousarray(sample)
        return feed

    def __iter__(self) -> Iterator[Feed]:
        for i in range(self.count):
            yield self.get(i)

    def subset(self, indices: Sequence[int]) -> list[Feed]:
        return [self.get(i) for i in indices]
