"""Command line: argument parsing only; everything else is the library.

    onnxopt IN.onnx OUT.onnx [options]       optimize (lossless pipeline by default)
    onnxopt unpack IN.onnxpack OUT.onnx      restore a packed model bit-exactly

Exit codes: 0 success; 1 optimization or validation failure; 2 bad usage or unreadable input.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from onnxopt import __version__
from onnxopt.errors import OnnxOptError, UsageError

log = logging.getLogger("onnxopt")

EPILOG = """\
examples:
  onnxopt model.onnx model.opt.onnx
  onnxopt det.onnx det.opt.onnx --input-shape x=1,3,640,640 --report report.json
  onnxopt model.onnx out.onnx --passes eliminate-identity,cleanup --validate end
  onnxopt unpack model.onnxpack model.onnx

exit codes: 0 success, 1 optimization or validation failure, 2 bad usage or unreadable input
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one clear line, exit 2
        self.print_usage(sys.stderr)
        sys.stderr.write(f"onnxopt: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="onnxopt", description="Optimize an ONNX model and prove it still answers like the original.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="model to optimize (.onnx, or a packed .onnxpack)")
    p.add_argument("output", help="where to write the optimized model (written atomically)")
    g = p.add_argument_group("pipeline")
    g.add_argument("--passes", help="comma-separated passes to run instead of the default lossless pipeline")
    g.add_argument("--list-passes", action="store_true", help=argparse.SUPPRESS)
    g.add_argument("--quantize", choices=("int8",), help="quantize (QDQ, calibrated with --calibration)")
    g.add_argument("--calibrate-method", choices=("minmax", "percentile", "entropy", "mse"),
                   help="activation range calibration for --quantize (default: the pass's own)")
    g.add_argument("--prune", type=float, metavar="R", help="remove fraction R of the channels (0 < R < 1)")
    g.add_argument("--share-weights", type=int, metavar="BITS",
                   help="lossy: store each large float weight as 2**BITS shared values (k-means; uint8 indices "
                        "+ codebook, decoded by onnxruntime at load), 1 <= BITS <= 8")
    g.add_argument("--pack", action="store_true", help="write a packed model (lossless entropy-coded weights)")
    g.add_argument("--pack-codecs", metavar="LIST",
                   help="with --pack: codecs it may choose from, comma-separated (default: all of "
                        "raw,zlib,lzma,brotli,huffman,rans,groups; raw is always the fallback)")
    g = p.add_argument_group("inputs and validation")
    g.add_argument("--input-shape", action="append", default=[], metavar="NAME=D1,D2,...",
                   help="fix a dynamic input's shape (repeatable); the output model keeps it fixed")
    g.add_argument("--validation-data", metavar="VAL.npz|DIR",
                   help="validation samples: .npz (one key per input) or a folder of images")
    g.add_argument("--calibration", metavar="CALIB.npz|DIR",
                   help="calibration samples (.npz or image folder); some are held apart for validation "
                        "when --validation-data is absent")
    g.add_argument("--image-size", metavar="H,W", help="image folders: resize to H,W (default: the model's input size)")
    g.add_argument("--mean", default="0,0,0", help="image folders: per-channel mean after scaling to [0,1]")
    g.add_argument("--std", default="1,1,1", help="image folders: per-channel std after scaling to [0,1]")
    g.add_argument("--layout", default="NCHW", choices=("NCHW", "NHWC"), help="image folders: input layout")
    g.add_argument("--bgr", action="store_true", help="image folders: feed channels as BGR")
    g.add_argument("--validate", choices=("each", "end", "off"), default="each",
                   help="validate after each pass (default), only at the end, or not at all")
    g.add_argument("--samples", type=int, default=4, help="synthetic validation samples (default 4)")
    g.add_argument("--int-range", type=int, default=16, metavar="N",
                   help="synthetic integer inputs are drawn from [0, N) (default 16)")
    g.add_argument("--rtol", type=float, default=1e-4, help="lossless passes: relative tolerance (default 1e-4)")
    g.add_argument("--atol", type=float, default=1e-5, help="lossless passes: absolute tolerance (default 1e-5)")
    g.add_argument("--min-cosine", type=float,
                   help="lossy passes: min cosine per float output (default: the pass's own budget, else 0.99)")
    g.add_argument("--min-sqnr", type=float,
                   help="lossy passes: min SQNR in dB per float output (default: the pass's own, else 20)")
    g.add_argument("--min-top1", type=float,
                   help="lossy passes: min top-1 agreement of class-score outputs (default: off)")
    g.add_argument("--min-agreement", type=float,
                   help="lossy passes: min fraction of equal values in integer outputs such as labels (0.99)")
    g.add_argument("--keep-going", action="store_true",
                   help="roll back a lossy pass that misses its budget instead of failing the run")
    g = p.add_argument_group("output")
    g.add_argument("--report", metavar="REPORT.json", help="write the full report as JSON")
    g.add_argument("--seed", type=int, default=0, help="seed for synthetic data (default 0)")
    g.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more detail; -v shows tracebacks")
    p.add_argument("--version", action="version", version=f"onnxopt {__version__}")
    return p


def build_unpack_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="onnxopt unpack", description="Restore a packed model (.onnxpack) to a plain .onnx, bit-exactly.")
    p.add_argument("input", help="packed model")
    p.add_argument("output", help="where to write the .onnx (written atomically)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else logging.DEBUG if verbose >= 2 else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("onnxopt: %(levelname)s: %(message)s"))
    root = logging.getLogger("onnxopt")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def pipeline_from_args(args: argparse.Namespace) -> list:
    """--passes as given, else the default lossless pipeline followed by --prune, --quantize, --share-weights."""
    from onnxopt.registry import default_pipeline, make_pass

    if args.passes is not None:
        names = [s.strip() for s in args.passes.split(",") if s.strip()]
        if not names:
            raise UsageError("--passes is empty")
        return [make_pass(n) for n in names]
    pipeline: list = [make_pass(n) for n in default_pipeline()]
    if args.prune is not None:
        if not 0.0 < args.prune < 1.0:
            raise UsageError(f"--prune takes a fraction between 0 and 1, got {args.prune}")
        pipeline.append(make_pass("prune-channels", ratio=args.prune))
    if args.quantize:
        opts: dict = {"method": args.calibrate_method} if args.calibrate_method else {}
        # the budget flags also steer the pass's mixed precision (which layers stay float)
        # (0 switches a criterion off: None for SQNR/cosine; the pass reads min_top1=0 as off itself,
        # since its None means the classifier default)
        for name in ("min_sqnr", "min_cosine", "min_top1"):
            value = getattr(args, name)
            if value is not None:
                opts[name] = value if name == "min_top1" else (value or None)
        pipeline.append(make_pass("quantize-int8", **opts))
    if args.share_weights is not None:
        pipeline.append(make_pass("share-weights", bits=args.share_weights))
    return pipeline


def _run_optimize(args: argparse.Namespace) -> int:
    from onnxopt.api import optimize
    from onnxopt.data import parse_input_shapes
    from onnxopt.images import ImagePreprocess, parse_floats, parse_size
    from onnxopt.model import write_bytes_atomic
    from onnxopt.progress import Progress
    from onnxopt.validate import Tolerance

    Progress.enabled_default = not args.quiet
    passes = pipeline_from_args(args)
    if args.pack_codecs is not None and not args.pack:
        raise UsageError("--pack-codecs needs --pack")
    pack_codecs = [c.strip() for c in args.pack_codecs.split(",") if c.strip()] if args.pack_codecs else None
    if Path(args.input).resolve() == Path(args.output).resolve():
        log.info("output replaces the input; it is written atomically once everything succeeded")
    budget_overrides = {"min_cosine": args.min_cosine, "min_sqnr_db": args.min_sqnr, "min_top1": args.min_top1,
                        "min_agreement": args.min_agreement}
    image_preprocess = ImagePreprocess(
        size=parse_size(args.image_size) if args.image_size else None,
        mean=parse_floats(args.mean, "--mean"), std=parse_floats(args.std, "--std"),
        layout=args.layout, bgr=args.bgr,
    )
    report = None
    try:
        result = optimize(
            args.input, args.output, passes=passes, input_shapes=parse_input_shapes(args.input_shape),
            validation_data=args.validation_data, calibration=args.calibration, validate=args.validate,
            samples=args.samples, seed=args.seed, int_high=args.int_range,
            tolerance=Tolerance(rtol=args.rtol, atol=args.atol), budget_overrides=budget_overrides,
            keep_going=args.keep_going,
            image_preprocess=image_preprocess, pack=args.pack, pack_codecs=pack_codecs,
        )
        report = result.report
    except OnnxOptError as exc:
        report = getattr(exc, "report", None)
        raise
    finally:
        if args.report and report is not None:
            write_bytes_atomic(args.report, (report.to_json() + "\n").encode())
    if not args.quiet:
        print(report.to_text())
    return 0


def _run_unpack(args: argparse.Namespace) -> int:
    from onnxopt.model import load, save

    model = load(args.input)
    save(model, args.output)
    if not args.quiet:
        print(f"onnxopt: unpacked {args.input} -> {args.output}")
    return 0


def _list_passes() -> int:
    from onnxopt.registry import builtin_passes, default_pipeline

    default = default_pipeline()
    for name, cls in sorted(builtin_passes().items()):
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        mark = "*" if name in default else " "
        print(f"{mark} {name:<22} {cls.kind.value:<8} {doc}")
    print("(* = in the default pipeline)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``onnxopt`` and ``python -m onnxopt``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--list-passes":
        return _list_passes()
    unpack = bool(argv) and argv[0] == "unpack"
    parser = build_unpack_parser() if unpack else build_parser()
    try:
        args = parser.parse_args(argv[1:] if unpack else argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    _setup_logging(args.verbose, args.quiet)
    try:
        return _run_unpack(args) if unpack else _run_optimize(args)
    except OnnxOptError as exc:
        if args.verbose:
            traceback.print_exc()
        sys.stderr.write(f"onnxopt: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("onnxopt: interrupted; nothing was written\n")
        return 130
    except MemoryError:
        sys.stderr.write("onnxopt: error: out of memory; try --validate end or off for very large models\n")
        return 1
    except Exception as exc:  # a bug: still one line unless -v
        if args.verbose:
            traceback.print_exc()
        sys.stderr.write(f"onnxopt: internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
