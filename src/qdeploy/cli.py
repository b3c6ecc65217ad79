"""The `qdeploy` command. Every flag of `run` is one plan key (see plan.py); errors are one line and exit code 2."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import traceback
from pathlib import Path

from .cli_bench import cmd_bench
from .cli_run import _Parser, _plan_from_args
from . import __version__
from .errors import ConfigError, QdeployError, disk_full

def cmd_run(args, console):
    from . import pipeline
    from .report import load_report

    if args.resume:
        # how the run goes on, not what it measures: these may change on --resume
        how = {"executor": args.executor, "address": args.address, "retries": args.retries,
               "keep_going": args.keep_going}
        given = [k for k, v in vars(args).items()
                 if k not in ("resume", "debug", "command", *how) and v is not None]
        if given:
            raise ConfigError(f"--resume continues a run with its own saved plan; drop --{given[0].replace('_', '-')}")
        plan = pipeline.load_resumable(Path(args.resume))
        from . import plan as plans

        data = {**plan.to_dict(), **{k: v for k, v in how.items() if v is not None}}
        if data["executor"] == "local":
            data["address"] = None
        plan = plans.from_dict(data, "--resume")
    else:
        plan = _plan_from_args(args)
    with _progress(console) as progress:
        report_path = pipeline.run(plan, progress, out=Path(args.resume) if args.resume else None,
                                   resume=bool(args.resume))
    from .cli_table import print_report

    from .pipeline.outcome import outcome

    report = load_report(report_path.parent)
    print_report(console, report)
    print(report_path)
    result = outcome(report)
    if any(f.retryable for f in result.failures):
        console.print(f"{len(result.failures)} cell(s) not run, one line each above ('not run'); "
                      f"`qdeploy run --resume {report_path.parent}` tries the failed ones again")
    if result.failed and not plan.keep_going:
        print(f"qdeploy: error: the run failed: {result.summary()}; the report lists why (--keep-going: exit 0 "
              "anyway)", file=sys.stderr)
        return 1
    return 0


def cmd_export(args, console):
    from . import exporters, models

    from .tasks import resolve_task

    source = models.resolve(args.model, allow_pickle=args.allow_pickle, task=args.task)
    task, why = resolve_task(args.task, source.config(), args.drop_head)
    with _progress(console) as progress:
        artifact = exporters.export(source, task, args.format, Path(args.out), opset=args.opset,
                                    trust_remote_code=args.trust_remote_code, progress=progress.log,
                                    stateful=not args.stateless)
    if why != "as asked":  # after the export, so that any error before it stays one line
        console.print(f"task {task} ({why})")
    v = artifact.manifest.validation
    bound = f"atol {v['atol']}" if "atol" in v else f"tolerance {v['tolerance']:.2g}, greedy tokens identical"
    console.print(f"validated on {v['runtime']}: max |diff| {v['max_abs_diff']:.2e} ({bound})")
    print(artifact.directory)


def _own_options(pairs: list[str] | None, method: str) -> list[str]:
    """`--option` as `run` spells it (METHOD.KEY=VALUE) or bare (KEY=VALUE): with one method, both mean the same."""
    own = []
    for pair in pairs or []:
        key = pair.partition("=")[0]
        prefix, dot, bare = key.rpartition(".")
        if dot and prefix != method:
            raise ConfigError(f"--option {pair!r} is for method {prefix}, but this quantize uses {method}")
        own.append(pair[len(prefix) + 1:] if dot else pair)
    return own


def cmd_quantize(args, console):
    from . import quantization
    from .artifact import Artifact
    from .calibration import CalibrationSource
    from .config import parse_options

    if "," in args.method:
        raise ConfigError(f"quantize makes one artifact with one method; got --method {args.method} "
                          "(`qdeploy run --methods` compares several)")
    formats = quantization.method(args.method).formats
    fmt = Artifact.load(args.artifact, graph=False).format  # the format the options are checked for
    config = quantization.make_config(args.method, parse_options(_own_options(args.option, args.method)),
                                      fmt if fmt in formats else None)
    parent = Artifact.load(args.artifact, verify=True)  # the graph (and its library): after the command line's checks
    calibration = CalibrationSource(args.calibration, samples=args.calibration_samples)
    if Path(args.out).exists():
        raise ConfigError(f"{args.out} already exists; choose another --out or remove it")
    if quantization.method(args.method).needs_calibration:
        calibration.texts()  # a missing or empty calibration file fails now, before anything is printed or loaded
    with _progress(console) as progress:
        artifact = quantization.quantize(parent, config, Path(args.out), calibration, progress=progress.log)
    for note in artifact.manifest.notes:
        console.print(f"  {note}")
    console.print(f"  peak memory while quantizing: +{artifact.manifest.method['peak_rss_delta_mb']:.0f} MB")
    print(artifact.directory)


def cmd_package(args, console):
    from .package import package, recommended_artifact

    artifact = recommended_artifact(args.artifact, args.batch) if args.recommended else args.artifact
    if args.recommended:
        console.print(f"packaging the recommended artifact {artifact}")
    print(package(artifact, args.out, args.report))


def cmd_compare(args, console):
    from .report.compare import compare_runs

    print(compare_runs([Path(d) for d in args.runs], Path(args.out)))


def cmd_inspect(args, console):
    from rich.markup import escape
    from rich.table import Table

    from .artifact import Artifact

    loaded = Artifact.load(args.artifact, graph=False)  # not an artifact: said before any graph library is imported
    from .calibration import CalibrationSource
    from .errors import UnsupportedError
    from .inspect_layers import artifact_plan, inspect

    plan = artifact_plan(loaded)
    table = Table("layer", "weights", "activations", "granularity", "why", title=escape(plan.summary()))
    for name, scheme in plan.layers.items():
        table.add_row(escape(name), scheme.weights, scheme.activations, scheme.grain or "-", escape(scheme.why))
    console.print(table)
    for transform in plan.transforms:
        console.print(escape(f"transform: {transform}"))
    # Beside the artifact, not inside: an artifact's directory holds exactly what its manifest lists.
    artifact = Path(args.artifact)
    out = Path(args.out) if args.out else artifact.parent / f"{artifact.resolve().name}.inspect.json"
    try:
        result = inspect(args.artifact, CalibrationSource(args.calibration, samples=args.calibration_samples), out)
    except UnsupportedError as exc:  # the plan above stands alone; the activation analysis needs more
        console.print(escape(f"activation ranges and SQNR not measured: {exc}"))
        return 0
    table = Table("layer", "int8", "activation max", "channels > 6", "int8 SQNR dB",
                  title=f"{result['quantized']} of {result['total']} Linear layers quantized")
    for layer in sorted(result["layers"], key=lambda l: l["int8_sqnr_db"]):
        table.add_row(layer["layer"], "yes" if layer["quantized"] else "float", f"{layer['activation_absmax']:.2f}",
                      str(layer["channels_above_6"]), f"{layer['int8_sqnr_db']:.1f}")
    console.print(table)
    print(out)


def cmd_list(args, console):
    from rich.console import Console
    from rich.markup import escape

    from . import evaluation, quantization, runtimes
    from .tasks import TASKS, VERIFIED_ARCHITECTURES

    console = Console(soft_wrap=not sys.stdout.isatty())  # piped: one line per entry, for grep
    if args.method:
        from .config import describe_options

        the_method = quantization.method(args.method)
        console.print(escape(f"{the_method.name} ({'/'.join(the_method.formats)}): {the_method.description}"))
        console.print("options (--option " + escape(f"{the_method.name}.KEY=VALUE") + "):")
        owned = getattr(the_method.config, "FORMAT_OPTIONS", {})  # not the options of a format it does not take
        for name, kind, default, note in describe_options(the_method.config):
            if owned.get(name, the_method.formats[0]) not in the_method.formats:
                continue
            console.print(escape(f"  {name:22} {kind}, default {default}" + (f": {note}" if note else "")))
        return

    console.print("[bold]methods[/bold]")
    for name in quantization.names():
        m = quantization.method(name)
        console.print(escape(f"  {name:18} ({'/'.join(m.formats)}) {m.description}"))
    console.print("[bold]runtimes[/bold]")
    for name in runtimes.names():
        reason = runtimes.get(name).unavailable_reason()
        console.print(f"  {name:18} {'available' if reason is None else 'unavailable: ' + reason}")
    console.print("[bold]metrics[/bold]")
    for name in evaluation.names():
        m = evaluation.metric(name)
        console.print(escape(f"  {name:18} [{', '.join(m.tasks)}] {m.description}; tolerance {m.tolerance.describe()}"))
    console.print("[bold]tasks[/bold] (and the methods a plan's `methods: default` runs for each)")
    for name in TASKS.names():
        console.print(escape(f"  {name:22} {', '.join(TASKS.get(name).methods)}"))
    console.print("[bold]architectures[/bold] any that transformers loads for the task, if its export validates "
                  "against PyTorch; verified by the tests:")
    for name, families in VERIFIED_ARCHITECTURES.items():
        console.print(escape(f"  {name:22} {', '.join(families)}"))


def _progress(console):
    from .cli_progress import RichProgress

    return RichProgress(console)


def build_parser() -> argparse.ArgumentParser:
    from .cli_parsers import add_commands

    parser = _Parser(prog="qdeploy", description="Export, quantize, run and measure Hugging Face transformers models.",
                     epilog="`qdeploy COMMAND --help` shows a command's flags and examples; with no command, "
                            "`qdeploy` runs the default plan (`qdeploy run`).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"qdeploy {__version__}")
    add_commands(parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND"))
    return parser


COMMANDS = {"run": cmd_run, "export": cmd_export, "quantize": cmd_quantize, "bench": cmd_bench,
            "package": cmd_package, "compare": cmd_compare, "inspect": cmd_inspect, "list": cmd_list}


_interrupted = False


def _on_sigint(signum, frame):
    # Remember the Ctrl-C: a C extension being imported at that moment turns KeyboardInterrupt into an ImportError.
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    import rich

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)
    # Progress and tables go to stderr; stdout carries only the result path, for scripts. The global console, because
    # libraries that draw their own progress bars (NNCF) draw on it: rich then nests their bars under qdeploy's
    # instead of writing a second live display to stdout.
    rich.reconfigure(stderr=True, width=None if sys.stderr.isatty() else 140, log_path=False)
    console = rich.get_console()
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        _quiet_libraries()
        code = COMMANDS[args.command or "run"](args if args.command else build_parser().parse_args(["run"]), console)
        return code or 0
    except QdeployError as exc:
        if _interrupted:  # Ctrl-C inside a library that turned it into an error of its own
            return _report_interrupt()
        if debug:
            traceback.print_exc()
        print(f"qdeploy: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _report_interrupt()
    except Exception as exc:  # an internal error: short message, traceback in a log
        if _interrupted:
            return _report_interrupt()
        if disk_full(exc):
            print("qdeploy: error: the disk is full (or a file-size limit was hit) while writing; unfinished "
                  "artifacts were removed: free some space or choose another --out", file=sys.stderr)
            return 2
        if debug:
            traceback.print_exc()
        fd, log = tempfile.mkstemp(prefix="qdeploy-error-", suffix=".log")
        with os.fdopen(fd, "w") as fh:
            traceback.print_exc(file=fh)
        print(f"qdeploy: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              f"(traceback in {log})", file=sys.stderr)
        return 1


def _report_interrupt() -> int:
    pipeline = sys.modules.get("qdeploy.pipeline")  # imported only when a run was started
    out = getattr(pipeline, "CURRENT_OUT", None)
    hint = f"continue with `qdeploy run --resume {out}`" if out else "a run continues with `qdeploy run --resume OUT`"
    print(f"qdeploy: interrupted; finished artifacts were kept, unfinished ones removed ({hint})", file=sys.stderr)
    return 130


def _quiet_libraries() -> None:
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    # ONNX Runtime's quantizer warns through the root logger; the CLI reports through its own lines instead.
    logging.getLogger().setLevel(logging.ERROR)
    # torch logs "Unable to find user code" and friends through its submodules' loggers while exporting
    for name in ("nncf", "transformers", "torch", "torch._dynamo", "torch.export", "torch.onnx", "openvino"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Read by transformers when it is imported: importing it here would cost every command, errors included, 1.5 s.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


if __name__ == "__main__":
    sys.exit(main())
