"""Command line: ``lcsnn run | check | info | doctor`` (also ``python -m brian_lcsnn``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
from contextlib import nullcontext
from pathlib import Path

from .interrupts import RunInterrupted, ignore_from_now_on, interruptible

__all__ = ["main"]

logger = logging.getLogger("brian_lcsnn")

EXIT_BAD_INPUT = 2


def _protocol_args(parser):
    parser.add_argument("protocol", help="the protocol file (YAML), or a shipped protocol's name (quickstart)")
    example = "e.g. --set network.n_filters=100 --set phases.0.n=500"
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a protocol value, {example}")  # fmt: skip
    parser.add_argument("--seed", type=int, help="override the protocol's seed")
    parser.add_argument("--device", choices=("cpp_standalone", "runtime", "cuda_standalone"),
                        help="override simulation.device")  # fmt: skip


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lcsnn", description="Locally connected spiking networks on MNIST, in Brian2."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a protocol; prints the run directory as the last line")
    _protocol_args(run)
    run.add_argument("--results", type=Path, help="results folder (default: $BRIAN_LCSNN_RESULTS or ./results)")
    run.add_argument("--quiet", action="store_true", help="no progress lines")

    resume = sub.add_parser("resume", help="finish an interrupted run from its last checkpoint")
    resume.add_argument("run", help="the run directory, or a run id (or unique prefix) in the results folder")
    resume.add_argument("--results", type=Path, help="results folder (default: $BRIAN_LCSNN_RESULTS or ./results)")
    resume.add_argument("--device", choices=("cpp_standalone", "runtime", "cuda_standalone"))
    resume.add_argument("--quiet", action="store_true", help="no progress lines")

    check = sub.add_parser("check", help="validate a protocol without running it")
    _protocol_args(check)

    info = sub.add_parser("info", help="sizes of a protocol's network (neurons, synapses, parameters)")
    _protocol_args(info)
    info.add_argument("--json", action="store_true", help="print JSON")

    sub.add_parser("doctor", help="check the environment: compiler, Brian2, numpy, a tiny C++ build, CUDA")
    for module in _command_modules():
        module.register(sub)  # each adds its sub-commands with set_defaults(handler=function(args) -> int)
    return parser


def _command_modules():
    """Modules that add sub-commands of their own (runs in the results folder, figures)."""
    from . import figures, report, store, sweep

    return [store, figures, report, sweep]


def _load(args):
    from .protocol import load_protocol

    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.device:
        overrides.append(f"simulation.device={args.device}")
    return load_protocol(args.protocol, overrides)


class _CurrentStderr(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is at the time (tests and notebooks swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _configure_logging(verbose: bool) -> None:
    if not any(isinstance(h, _CurrentStderr) for h in logger.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


def main(argv=None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # the reader went away (``lcsnn show RUN | head -1``): stop quietly, as cat does
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit would raise again
        except (OSError, ValueError, AttributeError):
            pass
        return 128 + signal.SIGPIPE


def _main(argv) -> int:
    args = _build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    # run and resume stop at the first SIGINT or SIGTERM (interrupts.py), whatever they are doing then
    with interruptible() if args.command in ("run", "resume") else nullcontext():
        return _dispatch(args)


def _dispatch(args) -> int:
    from .errors import LcsnnError

    try:
        if hasattr(args, "handler"):
            return args.handler(args)
        if args.command == "doctor":
            from .doctor import run_doctor

            return run_doctor()
        if args.command == "resume":
            from .runner import resume_run
            from .store import resolve_run

            run_dir = resolve_run(args.run, args.results)
            run_dir = resume_run(run_dir, device=args.device, progress=not args.quiet)
            _print_scores(run_dir)
            print(run_dir)
            return 0
        protocol = _load(args)
        if args.command == "check":
            from .checks import check_protocol

            check_protocol(protocol)  # everything run would reject before it simulates (nothing compiled)
            print(f"{protocol.path}: ok ({len(protocol['phases'])} phases)")
            return 0
        if args.command == "info":
            sizes = protocol.geometry.sizes()
            if args.json:
                print(json.dumps(sizes, indent=2))
            else:
                for key, value in sizes.items():
                    print(f"{key:>18}: {value:,}")
            return 0
        from .results import check_results_root, default_results_root
        from .runner import run_protocol

        results = check_results_root(args.results or default_results_root())
        run_dir = run_protocol(protocol, results, progress=not args.quiet)
        _print_scores(run_dir)
        print(run_dir)
        return 0
    except LcsnnError as err:  # every error meant for the user: one line, exit code 2
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunInterrupted as err:
        ignore_from_now_on()  # the process ends now: later signals are not errors, and the network objects
        logging.getLogger("brian2").setLevel(logging.ERROR)  # an interrupted build leaves are not worth a warning
        print(_interrupted_line(err, getattr(args, "results", None)), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _interrupted_line(err, results: Path | None) -> str:
    """``interrupted: <run dir>; resume with: lcsnn resume <id or path>`` (the id where the default results
    folder, or the one given, finds it)."""
    if err.run_dir is None:
        return f"interrupted ({err}) before the run directory was created: nothing to resume"
    from .results import default_results_root

    run_dir = Path(err.run_dir)
    root = results or default_results_root()
    where = run_dir.name if run_dir.parent.resolve() == Path(root).resolve() else str(run_dir)
    extra = f" --results {shlex.quote(str(results))}" if results is not None and where == run_dir.name else ""
    return f"interrupted: {run_dir}; resume with: lcsnn resume {shlex.quote(where)}{extra}"


def _print_scores(run_dir: Path) -> None:
    path = run_dir / "scores.json"
    if not path.exists():
        return
    for phase, methods in json.loads(path.read_text()).items():
        for method, score in methods.items():
            print(
                f"{phase:>10} {method:>14}: {score['accuracy']:.4f} ± {score['error']:.4f} (n={score['n']})",
                file=sys.stderr,
            )


if __name__ == "__main__":
    sys.exit(main())
