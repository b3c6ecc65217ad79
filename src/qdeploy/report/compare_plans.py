"""Layer plans across runs, for `qdeploy compare`: each run's variants with the one-line summary of the plan they
carried (report.json's variants), and, where two runs each have a variant of one method on one format and their plans
differ, how (LayerPlan.differences). A merged row is one thing only where both runs did the same to the same layers.
"""
from __future__ import annotations

from typing import Any

from ..errors import InputError
from ..layer_plan import LayerPlan
from .markdown import _md
from .plot_svg import _esc


def plan_section(runs: list[tuple[str, Any]]) -> dict[str, list[dict]]:
    """compare.json's `plans` from (run label, its report's variants): `variants`, one entry per variant that carried
    a plan; `differences`, per method and format, each later run's plan against the first run's that had one."""
    listed: list[dict] = []
    differences: list[dict] = []
    first: dict[tuple[str, str], tuple[str, str, LayerPlan]] = {}
    for label, variants in runs:
        seen: set[tuple[str, str]] = set()
        for record in variants if isinstance(variants, list) else []:
            if not isinstance(record, dict) or not isinstance(record.get("plan_summary"), str):
                continue
            key = (str(record.get("method")), str(record.get("format")))
            listed.append({"run": label, "variant": record.get("name"), "method": key[0], "format": key[1],
                           "plan_summary": record["plan_summary"]})
            if key in seen or not isinstance(record.get("layer_plan"), dict):
                continue  # a run's first variant of a method and format speaks for it
            seen.add(key)
            try:
                plan = LayerPlan.from_dict(record["layer_plan"], f"{label}: variant {record.get('name')}")
            except InputError:
                continue  # a hand-edited report: its summary is listed, its plan not compared
            if key not in first:
                first[key] = (label, str(record.get("name")), plan)
                continue
            then, name, before = first[key]
            found = before.differences(plan)
            if found:
                differences.append({"method": key[0], "format": key[1], "runs": [then, label],
                                    "variants": [name, record.get("name")], "differences": found})
    return {"variants": listed, "differences": differences}


def _difference_line(entry: dict) -> str:
    (a, b), (va, vb) = entry["runs"], entry["variants"]
    return (f"{entry['method']} ({entry['format']}): {va} in {a} vs {vb} in {b}: "
            + "; ".join(entry["differences"]))


def plan_markdown(section: dict | None) -> list[str]:
    if not section or not section.get("variants"):
        return []
    lines = ["## Layer plans", "", "| run | variant | format | plan |", "|:---|:---|:---|:---|"]
    lines += [f"| {_md(v['run'])} | {_md(v['variant'])} | {_md(v['format'])} | {_md(v['plan_summary'])} |"
              for v in section["variants"]]
    found = section.get("differences") or []
    lines += ["", "Where two runs' variants of one method did different things to the layers:" if found else
              "Variants of one method and format did the same to the layers in every run.", ""]
    return lines + [f"- {_md(_difference_line(entry))}" for entry in found] + ([""] if found else [])


def plan_html(section: dict | None) -> list[str]:
    if not section or not section.get("variants"):
        return []
    rows = "".join(f'<tr><td class="key">{_esc(v["run"])}</td><td class="key">{_esc(v["variant"])}</td>'
                   f'<td>{_esc(v["format"])}</td><td>{_esc(v["plan_summary"])}</td></tr>' for v in section["variants"])
    out = ["<h2>Layer plans</h2>", '<div class="scroll"><table><thead><tr><th>run</th><th>variant</th><th>format'
           f"</th><th>plan</th></tr></thead><tbody>{rows}</tbody></table></div>"]
    found = section.get("differences") or []
    if not found:
        return out + ['<p class="note">Variants of one method and format did the same to the layers in every '
                      "run.</p>"]
    return out + ['<p class="note">Where two runs\' variants of one method did different things to the layers:</p>',
                  "<ul>" + "".join(f"<li>{_esc(_difference_line(entry))}</li>" for entry in found) + "</ul>"]
