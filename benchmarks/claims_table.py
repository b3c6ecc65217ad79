"""The README's quality-claims table, generated: every claim of benchmarks/claims.yaml checked as CI checks it
(qdeploy/claims.py), the results stored with the machine, date and library versions, and the table between the
README's `<!-- claims -->` markers rewritten from what is stored.

    python benchmarks/claims_table.py            # check every claim, store, rewrite the README table
    python benchmarks/claims_table.py --table    # rewrite the table from the stored results only
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CLAIMS = ROOT / "benchmarks" / "claims.yaml"
STORED = ROOT / "benchmarks" / "results" / "claims.json"
README = ROOT / "README.md"
MARKERS = ("<!-- claims -->", "<!-- /claims -->")


def _points(metric: str, x: float) -> str:
    scale = 100 if metric in ("accuracy", "lastword", "agreement", "token-agreement") else 1
    return f"{x * scale:+.1f}"


def table(stored: dict) -> str:
    machine = stored["machine"]
    libraries = machine.get("libraries") or {}
    versions = ", ".join(f"{k} {libraries[k]}" for k in ("onnxruntime", "openvino", "nncf", "torch") if k in libraries)
    lines = [f"Checked {stored['created'][:10]} on {machine.get('cpu_model', '?')} ({versions}); "
             "regenerate with `python benchmarks/claims_table.py`.", "",
             "| claim | method | items | fp32 | quantized | change (90 % interval) | tolerance | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for result in stored["claims"]:
        claim = result["claim"]
        low, high = result["interval"]
        metric = claim["metric"]
        tolerance = _points(metric, claim["tolerance"]).lstrip("+")
        lines.append(f"| {claim['id']} | {claim['method']} | {result['n']} | {result['fp32']:.4f} | "
                     f"{result['value']:.4f} | {_points(metric, result['delta'])} ({_points(metric, low)} to "
                     f"{_points(metric, high)}) | ±{tolerance} | {result['verdict'].split(' (')[0]} |")
    return "\n".join(lines)


def rewrite_readme(stored: dict) -> None:
    text = README.read_text(encoding="utf-8")
    start, end = (text.index(m) for m in MARKERS)
    text = text[:start + len(MARKERS[0])] + "\n" + table(stored) + "\n" + text[end:]
    README.write_text(text, encoding="utf-8")


def check_all() -> dict:
    from qdeploy import claims, exporters, models
    from qdeploy.machine import describe

    made: dict = {}
    work = Path(tempfile.mkdtemp(prefix="qdeploy-claims-"))

    def parent(claim):
        key = claim.parent_key()
        if key not in made:
            model, task, fmt = key
            source = models.resolve(None if model == "default" else model, task=task)
            made[key] = exporters.export(source, task, fmt, work / f"parent-{len(made)}-{fmt}")
        return made[key]

    results = []
    for claim in claims.load(CLAIMS, SHARED):
        result = claims.check(claim, parent, work / "claims")
        print(f"{claim.id}: {result.verdict}", file=sys.stderr)
        results.append(result)
    STORED.parent.mkdir(parents=True, exist_ok=True)
    claims.write_results(results, STORED, describe())
    return json.loads(STORED.read_text(encoding="utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", action="store_true", help="only rewrite the README table from the stored results")
    args = parser.parse_args()
    stored = json.loads(STORED.read_text(encoding="utf-8")) if args.table else check_all()
    rewrite_readme(stored)
    print(re.sub(r"\n{3,}", "\n\n", table(stored)))


if __name__ == "__main__":
    main()
