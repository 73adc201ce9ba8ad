"""Model I/O: load and save ONNX models safely, and move them in and out of onnx-graphsurgeon.

Invariants:
- the input file is never written; saving goes to a temp file in the target folder, then a rename;
- external data may only live inside the model's own folder (no absolute paths, no ``..``, no symlink
  that leads out);
- models whose tensors exceed protobuf's 2 GB limit are saved with external data automatically;
- opset, IR version, producer, doc string and metadata_props survive graphsurgeon round trips.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Union

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from onnxopt.errors import BadModelError, OutputError, PassError

log = logging.getLogger(__name__)

ModelSource = Union[str, os.PathLike, bytes, onnx.ModelProto]  # noqa: UP007 (runtime alias, py3.10)

#: protobuf refuses messages of 2 GiB; leave room for the graph itself
PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_DATA_MARGIN = 64 * 2**20
#: tensors at least this large go to the external data file when external data is needed
EXTERNAL_TENSOR_MIN_BYTES = 1024


# --------------------------------------------------------------------------- tensor walking


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """Yield ``graph`` and every subgraph nested in node attributes (If/Loop/Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_graphs(g)


def iter_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Yield every TensorProto holding weights: initializers and Constant/attribute tensors, subgraphs too."""
    for graph in iter_graphs(model.graph):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors


def _itemsize(data_type: int) -> int:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return 0


def _packed_bits(data_type: int) -> int:
    """Bits per element of the sub-byte types (int4/uint4/float4), else 0."""
    names = {getattr(onnx.TensorProto, n, -1): 4 for n in ("INT4", "UINT4", "FLOAT4E2M1")}
    return names.get(data_type, 0)


def expected_raw_bytes(t: onnx.TensorProto) -> int | None:
    """Bytes that ``raw_data`` must hold for the tensor's dims and type (None: unknown type)."""
    if not t.data_type or t.data_type == onnx.TensorProto.STRING:
        return None
    count = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
    bits = _packed_bits(t.data_type)
    if bits:
        return (count * bits + 7) // 8
    itemsize = _itemsize(t.data_type)
    return count * itemsize if itemsize else None


def tensor_nbytes(t: onnx.TensorProto) -> int:
    """Bytes of data a tensor holds in memory (raw or typed fields), without materializing it.

    Reading ``raw_data`` (or asking protobuf's ByteSize, which serializes) copies it, so raw tensors
    are sized from dims x itemsize; :func:`load` checks once that every raw tensor holds exactly that.
    """
    if t.HasField("raw_data"):
        n = expected_raw_bytes(t)
        return n if n is not None else len(t.raw_data)
    for field in ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data"):
        values = getattr(t, field)
        if len(values):
            itemsize = 8 if field in ("int64_data", "double_data", "uint64_data") else 4
            if field == "string_data":
                return sum(len(s) for s in values)
            return len(values) * itemsize
    return 0


def check_raw_sizes(model: onnx.ModelProto, what: str, known: dict[int, int] | None = None) -> None:
    """Every raw tensor holds exactly dims x itemsize bytes, or BadModelError naming it.

    ``known`` maps a tensor's position in :func:`iter_tensors` order -> length already measured
    (external data just read), to skip a copy.
    """
    known = known or {}
    for index, t in enumerate(iter_tensors(model)):
        if not t.HasField("raw_data"):
            continue
        want = expected_raw_bytes(t)
        if want is None:
            continue
        got = known.get(index)
        if got is None:
            got = len(t.raw_data)
        if got != want:
            dims = "x".join(str(d) for d in t.dims) or "scalar"
            raise BadModelError(
                f"{what}: tensor {t.name!r} holds {got} bytes of data but its shape {dims} and type "
                f"{helper.tensor_dtype_to_string(t.data_type)} need {want}; the file is damaged or was "
                f"written by a faulty exporter", advice="export the model again")


def weight_bytes(model: onnx.ModelProto) -> int:
    """Total bytes of weights in ``model`` (initializers and constant tensors, subgraphs included)."""
    return sum(tensor_nbytes(t) for t in iter_tensors(model))


def node_count(model: onnx.ModelProto, *, recursive: bool = True) -> int:
    """Number of nodes in the main graph (and, with ``recursive``, in every subgraph)."""
    graphs = iter_graphs(model.graph) if recursive else [model.graph]
    return sum(len(g.node) for g in graphs)


def uses_external_data(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL


# --------------------------------------------------------------------------- loading


def _external_location(t: onnx.TensorProto) -> str:
    for entry in t.external_data:
        if entry.key == "location":
            return entry.value
    raise BadModelError(f"tensor {t.name!r} is marked external but has no 'location'")


EXTERNAL_DATA_ADVICE = ("keep external data files in the model's folder or below it and save the model with relative "
                        "locations (onnx.save(model, path, save_as_external_data=True, location='NAME.data'))")


def check_external_locations(model: onnx.ModelProto, base_dir: Path) -> None:
    """Refuse external-data locations that are absolute, climb out of ``base_dir`` or follow a symlink out."""
    base_real = Path(os.path.realpath(base_dir))
    for t in iter_tensors(model):
        if not uses_external_data(t):
            continue
        loc = _external_location(t)
        if os.path.isabs(loc) or loc.startswith(("\\", "/")) or (len(loc) > 1 and loc[1] == ":"):
            raise BadModelError(
                f"tensor {t.name!r}: external data location {loc!r} is an absolute path; "
                "only files inside the model's folder are allowed", advice=EXTERNAL_DATA_ADVICE
            )
        target = Path(os.path.realpath(base_real / loc))
        if os.path.commonpath([base_real, target]) != str(base_real):
            raise BadModelError(
                f"tensor {t.name!r}: external data location {loc!r} resolves outside the model's folder "
                f"{str(base_dir)!r}; refusing to read it", advice=EXTERNAL_DATA_ADVICE
            )
        if not target.is_file():
            raise BadModelError(f"tensor {t.name!r}: external data file {loc!r} not found next to the model",
                                advice="copy the data file into the model's folder (locations are relative to it)")


def load_external_data(model: onnx.ModelProto, base_dir: Path, what: str,
                       lengths: dict[int, int] | None = None) -> None:
    """Read every external tensor into ``raw_data``, one tensor at a time (peak: the model + one tensor).

    Offsets and lengths are checked against the file size before anything is read.
    """
    files: dict[str, int] = {}
    for index, t in enumerate(iter_tensors(model)):
        if not uses_external_data(t):
            continue
        info = {e.key: e.value for e in t.external_data}
        path = base_dir / info["location"]
        size = files.setdefault(str(path), path.stat().st_size)
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else size - offset
        except ValueError:
            raise BadModelError(f"{what}: tensor {t.name!r} has a non-numeric external offset/length") from None
        if offset < 0 or length < 0 or offset + length > size:
            raise BadModelError(
                f"{what}: tensor {t.name!r} claims bytes {offset}..{offset + length} of {info['location']!r}, "
                f"which has {size} bytes")
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                t.raw_data = f.read(length)
            if lengths is not None:
                lengths[index] = length
        except OSError as exc:
            raise BadModelError(f"{what}: cannot read external data {info['location']!r} ({exc.strerror})") from None
        t.data_location = onnx.TensorProto.DEFAULT
        del t.external_data[:]


def _parse(data: bytes, what: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise BadModelError(f"{what}: not a readable ONNX model ({exc.__class__.__name__}: {exc})") from None
    if not model.HasField("graph") or model.ir_version <= 0 or not model.opset_import:
        raise BadModelError(f"{what}: not an ONNX model (no graph, IR version or opset)")
    return model


def load(source: ModelSource, *, check: bool = True) -> onnx.ModelProto:
    """Load a model from a path, bytes or a ModelProto, with its external data; never modifies the source.

    Packed files (``--pack`` output) are recognized by their magic header and unpacked.
    Raises :class:`BadModelError` with a one-line reason for anything that is not a sound ONNX model.
    """
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        what = "model"
        base_dir = None
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        model = _load_packed_or_parse(data, "model bytes")
        what, base_dir = "model bytes", None
    else:
        path = Path(os.fspath(source))
        what = str(path)
        if not path.exists():
            raise BadModelError(f"{path}: no such file", advice="check the path")
        if not path.is_file():
            raise BadModelError(f"{path}: not a file", advice="give the path of an .onnx or .onnxpack file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BadModelError(f"{path}: cannot read ({exc.strerror})") from None
        model = _load_packed_or_parse(data, what)
        base_dir = path.parent
    lengths: dict[int, int] = {}
    if any(uses_external_data(t) for t in iter_tensors(model)):
        if base_dir is None:
            raise BadModelError(f"{what}: uses external data but was not loaded from a file path",
                                advice="pass the model's path, or load it with onnxopt.load(path) first")
        check_external_locations(model, base_dir)
        load_external_data(model, base_dir, what, lengths)
    check_raw_sizes(model, what, lengths)
    if check:
        check_model(model, what)
    return model


def _load_packed_or_parse(data: bytes, what: str) -> onnx.ModelProto:
    from onnxopt.packing import is_packed, unpack_model

    if is_packed(data):
        return unpack_model(data, source=what)
    return _parse(data, what)


#: above this many weight bytes the checker sees a weight-less structure copy (it would copy the model twice)
CHECK_STRUCTURE_ONLY_BYTES = 256 * 2**20


def check_model(model: onnx.ModelProto, what: str = "model") -> None:
    """Run the ONNX checker; large models are checked on a weight-less copy of their structure."""
    subject = model
    if weight_bytes(model) > CHECK_STRUCTURE_ONLY_BYTES:
        subject = structure_copy(model)
        for t in subject.graph.initializer:
            if t.data_type != onnx.TensorProto.STRING and not tensor_nbytes(t):
                itemsize = max(1, onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize)
                del t.dims[:]
                t.dims.append(1)
                t.raw_data = b"\0" * itemsize
    try:
        onnx.checker.check_model(subject)
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadModelError(f"{what}: invalid ONNX model: {first}") from None


# --------------------------------------------------------------------------- saving


def needs_external_data(model: onnx.ModelProto) -> bool:
    return weight_bytes(model) > PROTOBUF_LIMIT - EXTERNAL_DATA_MARGIN


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path in ``path``'s folder; rename it over ``path`` only if the block succeeds."""
    target = Path(os.fspath(path))
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{target}: output folder {str(folder)!r} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=folder)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write to folder {str(folder)!r} ({exc.strerror})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    write_parts_atomic(path, [data])


def write_parts_atomic(path: str | os.PathLike, parts: Sequence[bytes]) -> None:
    """Write the concatenation of ``parts`` to ``path`` atomically, without ever joining them."""
    with atomic_output(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                for part in parts:
                    f.write(part)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise OutputError(f"{path}: write failed ({exc.strerror})") from None


def save(model: onnx.ModelProto, path: str | os.PathLike, *, external_data: bool | None = None) -> None:
    """Save ``model`` to ``path`` atomically.

    ``external_data=None`` decides by size: above protobuf's 2 GB limit the weights go to
    ``<name>.data`` beside the model. The in-memory ``model`` is left exactly as it was.
    """
    path = Path(os.fspath(path))
    if external_data is None:
        external_data = needs_external_data(model)
    if not external_data:
        if weight_bytes(model) > STREAM_SAVE_BYTES:
            _save_streamed(model, path)
            return
        try:
            data = model.SerializeToString()
        except ValueError as exc:
            raise OutputError(f"{path}: cannot serialize model ({exc})") from None
        write_bytes_atomic(path, data)
        return
    _save_with_external_data(model, path)


#: models with more weight bytes than this are serialized initializer by initializer
STREAM_SAVE_BYTES = 128 * 2**20

_GRAPH_FIELD = 7  # ModelProto.graph
_INITIALIZER_FIELD = 5  # GraphProto.initializer
_RAW_DATA_FIELD = 9  # TensorProto.raw_data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _length_delimited(field: int, size: int) -> bytes:
    return _varint(field << 3 | 2) + _varint(size)


def copy_fields(src, dst, *, skip: str):
    """Copy every set field of protobuf message ``src`` into ``dst`` but ``skip``, which is never read
    (``ListFields`` would hand out a copy of a tensor's raw bytes just to skip them). Returns ``dst``."""
    for fd in src.DESCRIPTOR.fields:
        if fd.name == skip:
            continue
        repeated = getattr(fd, "is_repeated", None)
        if repeated is None:
            repeated = fd.label == fd.LABEL_REPEATED
        if repeated:
            if len(getattr(src, fd.name)):
                getattr(dst, fd.name).extend(getattr(src, fd.name))
        elif src.HasField(fd.name):
            if fd.message_type is not None:
                getattr(dst, fd.name).CopyFrom(getattr(src, fd.name))
            else:
                setattr(dst, fd.name, getattr(src, fd.name))
    return dst


def _save_streamed(model: onnx.ModelProto, path: Path) -> None:
    """Write ``model`` without ever holding its whole serialization in memory.

    Protobuf parsers accept fields in any order and merge repeated fields, so the file is the model
    without its main-graph initializers, then the graph field whose length covers the initializers
    appended one record at a time. Parsing it gives back exactly ``model``. A raw initializer is
    written as its other fields followed by its raw_data field, so its bytes are read once (protobuf's
    ``ByteSize`` would serialize it just to measure it); :func:`load` checked raw sizes against dims.
    """
    head = copy_fields(model, onnx.ModelProto(), skip="graph")
    graph = copy_fields(model.graph, onnx.GraphProto(), skip="initializer")
    graph_bytes = graph.SerializeToString()
    records = [_initializer_record(t) for t in model.graph.initializer]
    graph_size = len(graph_bytes) + sum(len(_length_delimited(_INITIALIZER_FIELD, size)) + size
                                        for _, _, size in records)
    with atomic_output(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                f.write(head.SerializeToString())
                f.write(_length_delimited(_GRAPH_FIELD, graph_size))
                f.write(graph_bytes)
                for t, (rest, n, size) in zip(model.graph.initializer, records):
                    f.write(_length_delimited(_INITIALIZER_FIELD, size))
                    if n is None:  # typed fields: serialized whole, one tensor at a time
                        f.write(t.SerializeToString())
                        continue
                    raw = t.raw_data
                    if len(raw) != n:
                        raise OutputError(f"{path}: tensor {t.name!r} holds {len(raw)} bytes, its shape says {n}")
                    f.write(rest)
                    f.write(_length_delimited(_RAW_DATA_FIELD, n))
                    f.write(raw)
                    del raw
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise OutputError(f"{path}: write failed ({exc.strerror})") from None


def _initializer_record(t: onnx.TensorProto) -> tuple[bytes, int | None, int]:
    """(the initializer serialized without its raw_data, the raw_data length, the record's size);
    for a tensor without raw_data: (b"", None, its serialized size)."""
    n = expected_raw_bytes(t) if t.HasField("raw_data") else None
    if n is None:
        return b"", None, t.ByteSize()
    rest = copy_fields(t, onnx.TensorProto(), skip="raw_data").SerializeToString()
    return rest, n, len(rest) + len(_length_delimited(_RAW_DATA_FIELD, n)) + n


_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def _raw_bytes(t: onnx.TensorProto) -> bytes:
    """A tensor's data as little-endian bytes (raw_data as is, typed fields converted)."""
    if t.HasField("raw_data"):
        return t.raw_data
    return numpy_helper.to_array(t).tobytes()


def _externalize(t: onnx.TensorProto, f, offset: int, location: str) -> tuple[onnx.TensorProto, int]:
    """Write ``t``'s data at the next 4 KB boundary of ``f``; return a data-less stub pointing at it."""
    stub = copy_fields(t, onnx.TensorProto(), skip="raw_data")
    for field in _TYPED_FIELDS:
        stub.ClearField(field)
    raw = _raw_bytes(t)
    pad = (-offset) % 4096
    f.write(b"\0" * pad)
    offset += pad
    f.write(raw)
    length = len(raw)
    del raw
    del stub.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = stub.external_data.add()
        entry.key, entry.value = key, value
    stub.data_location = onnx.TensorProto.EXTERNAL
    return stub, offset + length


def _is_external_candidate(t: onnx.TensorProto) -> bool:
    return t.data_type != onnx.TensorProto.STRING and tensor_nbytes(t) >= EXTERNAL_TENSOR_MIN_BYTES


def _save_with_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Weights to a data file beside ``path`` (4 KB aligned), graph to ``path``; ``model`` is not touched.

    The graph file is a copy of the model whose large tensors are stubs pointing into the data file
    (weights are read out one at a time: at most one tensor is held twice). The data file gets a
    fresh name, ``<name>.<token>.data``, and is in place before the graph file is renamed over
    ``path``: a reader, or a ``kill -9`` at any moment, sees either the old model with its old data or
    the new model with its new data, never a mix. The data file of the model replaced is removed.
    """
    previous = _external_files(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, data_tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".data.tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write to folder {str(folder)!r} ({exc.strerror})") from None
    data_tmp = Path(data_tmp_name)
    token = data_tmp.name[len(path.name) + 2 : -len(".data.tmp")]
    location = f"{path.name}.{token}.data"  # the name it gets once complete (a killed write leaves .tmp)
    final = folder / location
    try:
        with os.fdopen(fd, "wb") as f:
            offset = 0
            structure = copy_fields(model, onnx.ModelProto(), skip="graph")
            copy_fields(model.graph, structure.graph, skip="initializer")
            for t in model.graph.initializer:
                if _is_external_candidate(t):
                    stub, offset = _externalize(t, f, offset, location)
                    structure.graph.initializer.append(stub)
                else:
                    structure.graph.initializer.append(t)
            # tensors in node attributes and subgraphs live in ``structure``'s own copy: convert in place
            main_inits = {id(t) for t in structure.graph.initializer}
            for t in iter_tensors(structure):
                if id(t) not in main_inits and not uses_external_data(t) and _is_external_candidate(t):
                    stub, offset = _externalize(t, f, offset, location)
                    t.CopyFrom(stub)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(data_tmp, 0o644)
        os.replace(data_tmp, final)
        write_bytes_atomic(path, structure.SerializeToString())
    except BaseException as exc:
        for leftover in (data_tmp, final):
            with contextlib.suppress(OSError):
                leftover.unlink()
        if isinstance(exc, OSError):
            raise OutputError(f"{path}: write failed ({exc.strerror})") from None
        raise
    for old in previous - {location}:
        with contextlib.suppress(OSError):
            (folder / old).unlink()


def _external_files(path: Path) -> set[str]:
    """Data files of an earlier onnxopt save at ``path`` (``<name>.<token>.data`` only), to replace."""
    try:  # a graph file whose weights are external is small; anything else is not ours to clean up
        if not path.is_file() or path.stat().st_size >= 256 * 2**20:
            return set()
        old = onnx.ModelProto()
        old.ParseFromString(path.read_bytes())
    except (OSError, DecodeError, RuntimeError, ValueError):
        return set()
    names = set()
    for t in iter_tensors(old):
        if uses_external_data(t):
            with contextlib.suppress(BadModelError):
                loc = _external_location(t)
                if loc.startswith(path.name + ".") and loc.endswith(".data") and "/" not in loc:
                    names.add(loc)
    return names


# --------------------------------------------------------------------------- graphsurgeon round trip

_MODEL_FIELDS_KEPT = ("producer_name", "producer_version", "domain", "model_version", "doc_string")


@contextlib.contextmanager
def quiet_graphsurgeon() -> Iterator[None]:
    """Silence graphsurgeon's own logger (it prints warnings to stdout); problems surface as exceptions."""
    from onnx_graphsurgeon.logger import G_LOGGER

    old = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.CRITICAL
    try:
        yield
    finally:
        G_LOGGER.severity = old


def to_graph(model: onnx.ModelProto, *, infer: bool = False) -> gs.Graph:
    """Import a model into graphsurgeon (the in-memory graph every pass edits).

    With ``infer``, tensors get dtypes and shapes from ONNX shape inference, run on a copy of the
    model without its large weights (so a multi-GB model is never copied just to infer shapes).
    """
    try:
        with quiet_graphsurgeon():
            graph = gs.import_onnx(model)
    except Exception as exc:  # graphsurgeon raises bare exceptions on odd models
        raise BadModelError(f"cannot import model into onnx-graphsurgeon: {exc}") from None
    # graphsurgeon keeps the model's own opset_import container (also in each subgraph and function):
    # a view into the model's protobuf arena that would keep every weight of the model alive as long
    # as the graph lives, even after a pass has replaced all of its tensors. Detached copies instead.
    for g in [*gs_graphs(graph), *graph.functions]:
        if getattr(g, "import_domains", None) is not None:
            g.import_domains = [onnx.OperatorSetIdProto(domain=o.domain, version=o.version) for o in g.import_domains]
    if infer:
        _apply_inferred_types(graph, infer_types(model))
    return graph


def structure_copy(model: onnx.ModelProto, min_bytes: int = 4096) -> onnx.ModelProto:
    """Copy of ``model`` whose main-graph initializers of ``min_bytes`` or more keep name, dtype and dims
    but no data: enough for shape inference, cheap whatever the model's size."""
    copy = onnx.ModelProto(ir_version=model.ir_version)
    copy.opset_import.extend(model.opset_import)
    copy.functions.extend(model.functions)
    g = model.graph
    copy.graph.name = g.name
    for field in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(copy.graph, field).extend(getattr(g, field))
    for t in g.initializer:
        if tensor_nbytes(t) < min_bytes:
            copy.graph.initializer.append(t)
        else:
            stub = copy.graph.initializer.add()
            stub.name, stub.data_type = t.name, t.data_type
            stub.dims.extend(t.dims)
    return copy


def infer_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Name -> inferred type of every value ONNX shape inference can type (best effort; {} on failure)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(
            structure_copy(model), check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # inference is best-effort: passes must cope with unknown shapes
        log.debug("shape inference failed: %s", exc)
        return {}
    types: dict[str, onnx.TypeProto] = {}
    for g in iter_graphs(inferred.graph):
        for vi in list(g.value_info) + list(g.output) + list(g.input):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                types.setdefault(vi.name, vi.type)
    return types


def output_value_infos(model: onnx.ModelProto, names: Sequence[str]) -> list[onnx.ValueInfoProto]:
    """Graph-output entries that expose the named intermediate tensors (element types from shape
    inference on the weight-less structure, float when unknown; shapes left open)."""
    existing = {o.name for o in model.graph.output}
    wanted = [n for n in dict.fromkeys(names) if n not in existing]
    if not wanted:
        return []
    types = infer_types(model)
    infos = []
    for name in wanted:
        elem = types[name].tensor_type.elem_type if name in types else onnx.TensorProto.FLOAT
        vi = onnx.ValueInfoProto(name=name)
        vi.type.CopyFrom(helper.make_tensor_type_proto(elem or onnx.TensorProto.FLOAT, None))
        infos.append(vi)
    return infos


def gs_graphs(graph: gs.Graph) -> Iterator[gs.Graph]:
    """A graphsurgeon graph and every subgraph nested in its nodes' attributes."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield g
        for node in g.nodes:
            for value in node.attrs.values():
                for sub in value if isinstance(value, (list, tuple)) else [value]:
                    if isinstance(sub, gs.Graph):
                        stack.append(sub)


def _apply_inferred_types(graph: gs.Graph, types: dict[str, onnx.TypeProto]) -> None:
    from onnx import helper as onnx_helper

    seen: set[int] = set()
    for g in gs_graphs(graph):
        for t in g.tensors().values():
            if id(t) in seen or isinstance(t, gs.Constant) or t.name not in types:
                continue
            seen.add(id(t))
            tt = types[t.name].tensor_type
            if t.dtype is None:
                t.dtype = onnx_helper.tensor_dtype_to_np_dtype(tt.elem_type)
            if t.shape is None and tt.HasField("shape"):
                t.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]


def to_model(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export ``graph`` to a ModelProto that keeps ``like``'s IR version, opsets and metadata.

    Untouched weights (still the TensorProtos the graph was imported from) are exported as data-less
    stubs and their data is copied once into the final model: graphsurgeon's own export would copy
    every weight twice, and rename the source protos (which are the manager's rollback snapshot).
    """
    from onnx_graphsurgeon.ir.tensor import LazyValues

    swapped: list[tuple[gs.Constant, LazyValues]] = []
    graphs = list(gs_graphs(graph))
    sources: dict[str, onnx.TensorProto] = {}
    lazy = list({id(t): t for g in graphs for t in g.tensors().values()  # outer constants show up in subgraphs
                 if isinstance(t, gs.Constant) and type(t._values) is LazyValues}.values())
    for t in lazy:
        if sources.setdefault(t.name, t._values.tensor) is not t._values.tensor:
            sources = {}  # distinct weights share a name across scopes: export them the plain way
            break
    for t in lazy if sources else []:
        src = t._values.tensor
        swapped.append((t, t._values))
        t._values = LazyValues(onnx.TensorProto(name=t.name, data_type=src.data_type, dims=src.dims))
    try:
        with quiet_graphsurgeon():
            model = gs.export_onnx(graph, do_type_check=False)
    except Exception as exc:
        raise PassError(f"cannot export graph from onnx-graphsurgeon: {exc}") from None
    finally:
        for t, values in reversed(swapped):
            t._values = values
    for exported in iter_graphs(model.graph):
        for init in exported.initializer:
            src = sources.get(init.name)
            if src is not None:
                name = init.name
                init.CopyFrom(src)
                init.name = name
    model.ir_version = like.ir_version
    if like.ir_version < 4:  # IR < 4 requires every initializer to be a graph input as well
        listed = {i.name for i in model.graph.input}
        for init in model.graph.initializer:
            if init.name not in listed:
                model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    opsets = {o.domain: o.version for o in like.opset_import}
    for o in model.opset_import:  # a pass may have raised an opset (e.g. QDQ needs 13)
        opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    del model.opset_import[:]
    for domain, version in opsets.items():
        model.opset_import.add(domain=domain, version=version)
    for name in _MODEL_FIELDS_KEPT:
        if like.HasField(name):
            setattr(model, name, getattr(like, name))
    del model.metadata_props[:]
    model.metadata_props.extend(like.metadata_props)
    if not model.functions and like.functions:
        model.functions.extend(like.functions)
    return model


def default_opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return 1


def upgrade_opset(model: onnx.ModelProto, min_opset: int) -> onnx.ModelProto:
    """Return ``model`` converted to at least ``min_opset`` (the same object if already there)."""
    current = default_opset(model)
    if current >= min_opset:
        return model
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, min_opset)
    except Exception as exc:
        raise PassError(f"cannot upgrade the model from opset {current} to {min_opset}: {exc}",
                        advice=f"export the model again at opset {min_opset} or newer") from None
    # version_converter may drop metadata; keep the model's identity
    for name in _MODEL_FIELDS_KEPT:
        if model.HasField(name) and not converted.HasField(name):
            setattr(converted, name, getattr(model, name))
    if not converted.metadata_props:
        converted.metadata_props.extend(model.metadata_props)
    return converted
