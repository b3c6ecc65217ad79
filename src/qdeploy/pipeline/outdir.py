"""A run's directory: made once with its plan (so that --resume finishes the same work), never overwritten."""
from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

from .. import models
from ..errors import ConfigError
from ..plan import Plan
from .store import PLAN_FILE


def default_out(source: models.ModelSource) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{source.name}-{stamp}"


def prepare_out(plan: Plan, source: models.ModelSource, out: Path | None, resume: bool) -> Path:
    if resume:
        if not out or not (Path(out) / PLAN_FILE).is_file():
            raise ConfigError(f"--resume needs the directory of an earlier run (with {PLAN_FILE}); {out} is not one")
        return Path(out)
    out = Path(out or plan.out or default_out(source))
    if out.exists():
        raise ConfigError(f"{out} already exists; a run never overwrites another: choose another --out, "
                          f"or continue it with --resume {out}")
    (out / "artifacts").mkdir(parents=True)
    tmp = out / (PLAN_FILE + ".part")
    tmp.write_text(json.dumps(plan.to_dict(), indent=2), encoding="utf-8")
    os.replace(tmp, out / PLAN_FILE)
    return out


def load_resumable(out: Path) -> Plan:
    """The plan an interrupted run was started with: a resumed run finishes the same work."""
    from ..plan import from_dict

    path = Path(out) / PLAN_FILE
    if not path.is_file():
        raise ConfigError(f"--resume needs the directory of an earlier run (with {PLAN_FILE}); {out} is not one")
    return from_dict(json.loads(path.read_text(encoding="utf-8")), where=str(path))
