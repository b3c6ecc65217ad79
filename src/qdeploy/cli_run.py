"""`qdeploy run`'s flags: each is one plan key (see plan.py), so a flag and a plan file say the same thing."""
from __future__ import annotations

import argparse
from pathlib import Path

from .errors import ConfigError
from .plan import DEFAULT_METHODS

EPILOG_RUN = """examples:
  qdeploy run
  qdeploy run --eval stsb=../shared/data/stsb/sts-test.tsv
  qdeploy run --model ../shared/models/minilm-l6-sst2 --eval accuracy=../shared/data/sst2/dev.tsv
  qdeploy run --methods ort-dynamic,nncf-ptq --runtimes torch,ort-cpu,openvino-cpu --batch-sizes 1 --seq-len 64
  qdeploy run --plan examples/sst2-plan.yaml --out runs/today
  qdeploy run --resume runs/today
  qdeploy run --plan examples/sst2-plan.yaml --executor ray --out runs/ray
  qdeploy run --model ../shared/models/stories260k --methods ort-dynamic,nncf-weight-int8 --batch-sizes 1,4 --eval perplexity=../shared/data/tinystories/valid-head.txt
"""  # noqa: E501 (one command a line, to copy and run)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other user error
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def _csv(kind):
    def parse(value: str):
        items = [v.strip() for v in value.split(",") if v.strip()]
        try:
            return [kind(v) for v in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {value!r}")
    return parse


def _eval_pairs(pairs):
    evals = {}
    for pair in pairs or []:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--eval {pair!r} must look like METRIC=PATH (e.g. stsb=sts-test.tsv)")
        evals[name] = path
    return evals


def _tolerances(pairs):
    tolerance = {}
    for pair in pairs:
        name, sep, amount = pair.partition("=")
        try:
            tolerance[name.strip()] = float(amount)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ConfigError(f"--tolerance {pair!r} must look like METRIC=AMOUNT (e.g. accuracy=0.01)")
    return tolerance


def _add_run(sub):
    p = sub.add_parser("run", help="export, quantize, run and measure a model; write a report",
                       description="Run a plan (the built-in default when no flag is given). Each flag overrides the "
                                   "plan key of the same name.", epilog=EPILOG_RUN,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", type=Path, metavar="PLAN.yaml",
                   help="plan file (YAML, e.g. examples/sst2-plan.yaml); flags override its keys")
    p.add_argument("--resume", metavar="OUT", help="continue an interrupted run in OUT, re-using its finished cells "
                                                  "and trying its failed ones again")
    p.add_argument("--keep-going", action="store_true", default=None,
                   help="exit 0 even when every requested method or runtime failed (the failures are still listed); "
                        "without it such a run exits 1")
    p.add_argument("--model", metavar="ID_OR_DIR",
                   help="local model directory, .gguf file or Hugging Face hub id (default: all-MiniLM-L6-v2; "
                        "SmolLM2-135M-Instruct for text-generation)")
    p.add_argument("--task", metavar="auto|TASK",
                   help="auto (default: from the model's config.json) | feature-extraction | "
                        "text-classification | text-generation | text2text-generation")
    p.add_argument("--drop-head", action="store_true", default=None,
                   help="with --task feature-extraction on a model that has a task head: measure the encoder alone")
    p.add_argument("--methods", "--method", dest="methods", metavar="M1,M2",
                   help="comma-separated quantization methods (see `qdeploy list`)")
    p.add_argument("--option", action="append", metavar="METHOD.KEY=VALUE",
                   help="a method option, e.g. ort-static.per_channel=false (repeatable)")
    p.add_argument("--runtimes", "--runtime", dest="runtimes", type=_csv(str), metavar="R1,R2",
                   help="comma-separated runtimes (see `qdeploy list`), or auto: every runtime present (default)")
    p.add_argument("--calibration", metavar="SPEC",
                   help="calibration text: builtin, a .txt/.tsv/.csv/.jsonl file, or FILE:COLUMN")
    p.add_argument("--calibration-samples", type=int, metavar="N", help="number of calibration samples (default 128)")
    p.add_argument("--eval", action="append", metavar="METRIC=PATH", help="quality metric on a file (repeatable)")
    p.add_argument("--batch-sizes", type=_csv(int), metavar="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--seq-len", type=int, metavar="N", help="sequence length of benchmark inputs (default 128)")
    p.add_argument("--threads", type=int, metavar="N", help="threads per session (default: physical cores)")
    p.add_argument("--warmup", type=int, metavar="N", help="warm-up iterations per measurement")
    p.add_argument("--min-reps", type=int, metavar="N", help="minimum timed iterations per measurement")
    p.add_argument("--min-time-s", type=float, metavar="S", help="minimum timed seconds per measurement")
    p.add_argument("--rounds", type=int, metavar="N",
                   help="interleaved timing rounds for speed-ups (default 15, at least 6)")
    p.add_argument("--strict-timing", action="store_true", default=None,
                   help="fail instead of marking rows when the machine was busy while timing")
    p.add_argument("--tolerance", action="append", metavar="METRIC=AMOUNT",
                   help="largest quality loss that still qualifies a variant, in the metric's units "
                        "(e.g. accuracy=0.01 for 1 point; perplexity=0.02 for 2 %%); repeatable")
    p.add_argument("--throughput-streams", type=int, metavar="N",
                   help="also measure throughput with N concurrent streams (each with cores/N threads)")
    p.add_argument("--new-tokens", type=int, metavar="N",
                   help="text-generation: tokens decoded per request in the generation benchmark (default 64)")
    p.add_argument("--timing", type=_csv(str), metavar="model[,end-to-end]",
                   help="what latency times: model (tokenized inputs; default) and/or end-to-end (tokenization too)")
    p.add_argument("--out", metavar="DIR",
                   help="output directory (default runs/<model>-<timestamp>); never overwritten")
    p.add_argument("--allow-pickle", action="store_true", default=None, help="allow pytorch_model.bin (pickle) weights")
    p.add_argument("--trust-remote-code", action="store_true", default=None, help="run the model repository's own code")
    p.add_argument("--executor", choices=("local", "ray"),
                   help="local: every cell in this process (default); ray: cells as Ray tasks (pip install "
                        "qdeploy[ray])")
    p.add_argument("--address", metavar="HOST:PORT", help="ray: the cluster to join (HOST:6379 or ray://HOST:10001); "
                                     "none starts a local Ray instance")
    p.add_argument("--storage", metavar="DIR_OR_URI",
                   help="where artifacts go: a directory or fsspec URI that every node reaches "
                        "(default OUT/artifacts)")
    p.add_argument("--retries", type=int, metavar="N",
                   help="ray: retries of a cell whose worker or node is lost (default 2)")


def _plan_from_args(args):
    from . import plan as plans

    base = plans.load(args.plan) if args.plan else plans.default()
    data = base.to_dict()
    simple = {"model": args.model, "task": args.task, "drop_head": args.drop_head, "runtimes": args.runtimes,
              "batch_sizes": args.batch_sizes,
              "seq_len": args.seq_len, "threads": args.threads, "warmup": args.warmup, "min_reps": args.min_reps,
              "min_time_s": args.min_time_s, "rounds": args.rounds, "strict_timing": args.strict_timing,
              "keep_going": args.keep_going,
              "throughput_streams": args.throughput_streams,
              "new_tokens": args.new_tokens, "timing": args.timing, "out": args.out, "allow_pickle": args.allow_pickle,
              "trust_remote_code": args.trust_remote_code,
              "executor": args.executor, "address": args.address, "storage": args.storage, "retries": args.retries}
    data.update({k: v for k, v in simple.items() if v is not None})
    if args.methods is not None:
        data["methods"] = [{"name": m.strip(), "options": {}} for m in args.methods.split(",") if m.strip()]
    if args.option:
        if data["methods"] == DEFAULT_METHODS:  # options name methods: spell out the task's own
            data["methods"] = [{"name": m, "options": {}} for m in _default_methods(data)]
        by_name = {m["name"]: m for m in data["methods"]}
        for pair in args.option:
            target, sep, value = pair.partition("=")
            method, dot, key = target.rpartition(".")
            if not sep or not dot or method not in by_name:
                raise ConfigError(f"--option {pair!r} must look like METHOD.KEY=VALUE with METHOD one of the run's "
                                  f"methods ({', '.join(by_name) or 'none'})")
            by_name[method]["options"][key] = value
    if args.calibration is not None:
        data["calibration"]["source"] = args.calibration
    if args.calibration_samples is not None:
        data["calibration"]["samples"] = args.calibration_samples
    if args.eval:
        data["eval"] = {**data["eval"], **_eval_pairs(args.eval)}
    if args.tolerance:
        data["tolerance"] = {**data["tolerance"], **_tolerances(args.tolerance)}
    return plans.from_dict(data, where="run flags")


def _default_methods(data: dict) -> tuple[str, ...]:
    """The methods `methods: default` runs for the plan's task (resolved from the model when the task is auto)."""
    from . import models
    from .tasks import resolve_task, task

    name = data.get("task") or "auto"
    if name == "auto":
        source = models.resolve(data.get("model"), allow_pickle=bool(data.get("allow_pickle")))
        name = resolve_task("auto", source.config(), bool(data.get("drop_head")))[0]
    return task(name).methods
