"""Everything about a plan that can be wrong, checked before the long work: the model and its task, method names and
options (each config checks its own), runtimes, metrics and their files, tolerances, sizes and the calibration file."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .. import evaluation, models, quantization, runtimes
from ..calibration import CalibrationSource
from ..errors import ConfigError, UnsupportedError
from ..plan import Plan, method_specs
from ..tasks import architecture, check_task, resolve_task
from ..tasks import max_positions as max_positions_of
from ..tasks import task as get_task

AUTO = "auto"  # every registered runtime; those missing here are listed as not run


@dataclass
class Checked:
    """A plan whose names, options and files have all been checked."""
    plan: Plan
    source: models.ModelSource
    method_configs: list[tuple[str, str, Any, str]]  # (variant, method, config, the parent's format)
    metrics: list[str]
    runtimes: list[str]
    unavailable: dict[str, str]
    calibration: CalibrationSource
    task_reason: str  # why this task: inferred from config.json, or as asked


def check(plan: Plan) -> Checked:
    source = models.resolve(plan.model, allow_pickle=plan.allow_pickle, task=plan.task)
    task_name, task_reason = resolve_task(plan.task, source.config(), plan.drop_head)
    the_task = get_task(task_name)
    plan = replace(plan, task=task_name,
                   methods=method_specs(list(the_task.methods)) if plan.methods is None else plan.methods)
    method_configs = []
    for spec in plan.methods:
        fmt = spec.format or quantization.method(spec.name).input_format
        method_configs.append((spec.variant, spec.name, quantization.make_config(spec.name, spec.options, fmt), fmt))
    auto = tuple(plan.runtimes) == (AUTO,)
    wanted_runtimes = runtimes.names() if auto else list(plan.runtimes)
    for runtime in wanted_runtimes:
        runtimes.get(runtime)
    if not wanted_runtimes:
        raise ConfigError(f"no runtimes to run; choose from: {AUTO}, {', '.join(runtimes.names())}")
    metrics = [the_task.default_metric]
    for name, path in plan.eval.items():
        metric = evaluation.metric(name)
        if plan.task not in metric.tasks:
            supported = [n for n in evaluation.names() if plan.task in evaluation.metric(n).tasks]
            raise ConfigError(f"metric {name} does not apply to task {plan.task}; use one of: {', '.join(supported)}")
        if not metric.parses_path:
            path = evaluation.check_path(path, name)
        if metric.read:
            metric.read(path)  # a file the metric cannot parse fails now, not after the exports
        if name not in metrics:
            metrics.append(name)
    unknown = sorted(set(plan.tolerance) - set(metrics))
    if unknown:
        raise ConfigError(f"tolerance names {', '.join(unknown)}, which this run does not measure; it measures "
                          f"{', '.join(metrics)}")
    if not plan.batch_sizes or min(plan.batch_sizes) < 1 or plan.seq_len < 2:
        raise ConfigError("batch sizes must be >= 1 and the sequence length >= 2")
    if "model" not in plan.timing:
        # Speed-ups, comparisons and throughput are all built on the model-only timing; end-to-end comes beside it.
        raise ConfigError("timing must include model (e.g. model,end-to-end); got "
                          f"{','.join(plan.timing) or 'nothing'}")
    unavailable = {r: reason for r in wanted_runtimes if (reason := runtimes.get(r).unavailable_reason())}
    if plan.executor != "local" and not auto:
        # Named runtimes are tried on the cluster's nodes, which may have what this one lacks (a GPU, a provider);
        # where a node lacks one, that cell is reported as not run with the node's reason.
        unavailable = {}
    if unavailable and not auto:
        # Asked for by name: an error. Under `auto`, runtimes missing here are reported as not run.
        available = [r for r in runtimes.names() if runtimes.get(r).unavailable_reason() is None]
        name, reason = next(iter(unavailable.items()))
        raise UnsupportedError(f"runtime {name} is not available: {reason}; available here: {', '.join(available)}")
    check_task(architecture(source.model_type), plan.task)
    cal = plan.calibration
    calibration = CalibrationSource(cal.source, cal.samples, cal.seed, cal.max_length, cal.batch_size)
    if any(quantization.method(name).needs_calibration for _, name, _, _ in method_configs):
        calibration.texts()  # fail now, not after the exports, on a missing or empty calibration file
    return Checked(plan, source, method_configs, metrics, wanted_runtimes, unavailable, calibration, task_reason)


def max_positions(source: models.ModelSource) -> int | None:
    return max_positions_of(source.config())
