"""CI's quality gate: every claim of benchmarks/claims.yaml re-checked on real models and data (the fp32 exports made
once per session and shared by the claims on them). A claim fails when the equivalence test shows its method's loss
to be larger than the tolerance written beside it."""
from __future__ import annotations

import pytest

from qdeploy import claims, exporters, models

from .conftest import ROOT, SHARED

CLAIMS = claims.load(ROOT / "benchmarks" / "claims.yaml", SHARED)


@pytest.fixture(scope="session")
def claim_parents(tmp_path_factory):
    """fp32 exports by (model, task, format), made when a claim first needs one."""
    made = {}
    out = tmp_path_factory.mktemp("claim-parents")

    def parent(claim: claims.Claim):
        key = claim.parent_key()
        if key not in made:
            model, task, fmt = key
            source = models.resolve(None if model == "default" else model, task=task)
            made[key] = exporters.export(source, task, fmt, out / f"{len(made)}-{fmt}")
        return made[key]

    return parent


@pytest.mark.parametrize("claim", CLAIMS, ids=[c.id for c in CLAIMS])
def test_claim_holds(claim, claim_parents, tmp_path):
    if not SHARED.is_dir():
        pytest.skip(f"needs the real data of {SHARED}")
    result = claims.check(claim, claim_parents, tmp_path)
    assert result.n == claim.items
    assert result.holds, (f"{claim.id}: {claim.method} {result.verdict}: {claim.metric} {result.value:.4f} vs fp32 "
                          f"{result.fp32:.4f} on {result.n} items")
