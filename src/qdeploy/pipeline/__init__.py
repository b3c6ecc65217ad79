"""Runs a plan: check -> export -> quantize -> (quality, latency) per machine type x variant x runtime -> report.

The work is a list of cells (work.py) that an executor runs: in this process, or on a Ray cluster. Each machine
type's PyTorch fp32 baseline is timed first by the same process that times its variants, so every speed-up is a ratio
to a baseline measured in the same run on the same machine. Bad input is checked before the long work starts
(check.py); the run's directory and plan (outdir.py), its finished cells (store.py), the cells stage by stage
(stages.py) and the report (assemble.py) are one module each, imported in that direction only.
"""
from __future__ import annotations

import uuid
from pathlib import Path

from .. import executors
from ..benchmarking import load
from ..errors import BusyMachineError, ConfigError
from ..plan import Plan
from ..progress import Progress, Silent
from ..storage import Storage
from ..work import RunContext, Scenarios
from . import assemble
from .check import AUTO, Checked, check, max_positions
from .outdir import default_out, load_resumable, prepare_out
from .stages import Stages
from .store import CellStore, remove_stale_staging

__all__ = ["AUTO", "CURRENT_OUT", "Checked", "check", "default_out", "load_resumable", "run"]
CURRENT_OUT: Path | None = None  # the directory of the run under way in this process


def run(plan: Plan, progress: Progress | None = None, out: Path | None = None, resume: bool = False) -> Path:
    progress = progress or Silent()
    checked = check(plan)
    plan, source = checked.plan, checked.source  # the plan with its task resolved
    positions = max_positions(source)
    if positions and plan.seq_len > positions:
        raise ConfigError(f"--seq-len {plan.seq_len} is beyond what {source.name} allows ({positions} positions)")
    executor = executors.make(plan)  # a missing Ray fails here, before the run directory exists
    if plan.strict_timing and plan.executor == "local":
        busy = load.judge(load.probe())
        if busy:  # before the long work; the measurement itself is checked again when it is taken
            raise BusyMachineError(f"the machine is busy ({'; '.join(busy.reasons)}) and --strict-timing is set; "
                                   "run when it is idle")
    out = prepare_out(plan, source, out, resume)
    global CURRENT_OUT
    CURRENT_OUT = out  # the CLI names it in the resume hint when the run is interrupted
    default_storage = plan.storage is None
    storage = Storage(out / "artifacts" if default_storage else plan.storage)
    if not storage.remote:
        for name in remove_stale_staging(Path(storage.root)):
            progress.log(f"removed unfinished {name} left by an interrupted run")
    store = CellStore(out)
    with executor:
        if checked.task_reason != "as asked":  # said once the run is under way, so an error stays one line
            progress.log(f"task {plan.task} ({checked.task_reason})")
        work = RunContext(key=f"{out.resolve()}#{uuid.uuid4().hex[:8]}", task=plan.task, source=source,
                          storage=storage, metrics=tuple(checked.metrics), eval=dict(plan.eval),
                          calibration=checked.calibration, scenarios=Scenarios.of(plan), max_positions=positions,
                          trust_remote_code=plan.trust_remote_code, parallel=executor.name != "local")
        stages = Stages(checked, work, store, executor, progress)
        variants = stages.build()
        rows, machines, threads = stages.measure(variants)
    return assemble.write(out, checked, stages, variants, rows, machines, threads)
