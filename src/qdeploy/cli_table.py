"""What `qdeploy run` prints when it ends: the recommendation first, then one row per variant and runtime."""
from __future__ import annotations

from .report import Report
from .report.formatting import speedup_text


def _print_recommendation(console, report: Report):
    from rich.markup import escape

    for choice in (report.recommendation or {}).get("choices", []):
        where = f"batch {choice['batch']}" + (f" on {choice['machine']}" if len(report.machines or {}) > 1 else "")
        console.print(f"[bold green]{where}: {escape(choice['headline'])}[/bold green]")
        for reason in choice["reasons"]:
            console.print(f"  {escape(reason)}")
    choice = (report.settings or {}).get("threads_choice")
    if isinstance(choice, dict) and choice.get("reason"):
        console.print(f"threads: {escape(choice['reason'])}")


def print_report(console, report: Report):
    from rich.markup import escape
    from rich.table import Table

    _print_recommendation(console, report)
    machines = report.machines or {}
    machine = report.machine
    cpu = machine["cpu_model"] + (f" ({machine['cpu_generation']})" if machine.get("cpu_generation") else "")
    where = cpu if len(machines) <= 1 else f"{len(machines)} machine types"
    table = Table(title=f"{report.model['source']} ({report.model['task']}) on {where}")
    columns = ("machine",) * (len(machines) > 1) + ("variant", "runtime", "batch", "p50 ms", "speed-up (95 % CI)",
                                                   "size MB", "quality", "Δ vs fp32", "")
    for column in columns:
        table.add_column(column, justify="left" if column in ("machine", "variant", "runtime", "") else "right")
    for row in report.results:
        q = row.quality
        verdict = (q.verdict if q else None) or {}
        delta = "-" if q is None or q.delta is None else f"{q.delta:+.4f}" + ("" if verdict.get("qualifies", True)
                                                                              else " ✗")
        table.add_row(*(row.machine or "",) * (len(machines) > 1), row.variant, row.runtime,
                      str(row.batch), f"{row.p50:.2f}", speedup_text(row.speedup, row.speedup_interval),
                      f"{row.size_mb:.1f}", f"{q.metric} {q.value:.4f}" if q else "-", delta,
                      "[yellow]busy[/yellow]" if row.busy_reasons else "")
    console.print(table)
    busy = dict.fromkeys(r for row in report.results for r in row.busy_reasons or [])
    if busy:
        console.print(f"[yellow]busy[/yellow]: the machine was busy while timing ({escape('; '.join(busy))}); the "
                      "ratios come from interleaved rounds, use --strict-timing to refuse such a run")
    for record in report.variants or []:  # variants of one method that did different things to their layers
        if isinstance(record, dict) and isinstance(record.get("plan_differences"), str):
            console.print(f"layer plan of {escape(str(record.get('name')))}: {escape(record['plan_differences'])}")
    for skip in report.skipped or []:
        on = f" ({skip['machine']})" if skip.get("machine") else ""
        console.print(f"[yellow]not run[/yellow] {skip['variant']} on {skip['runtime']}{on}: {escape(skip['reason'])}")
