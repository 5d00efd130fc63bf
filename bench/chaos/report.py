"""A chaos run's report: per step and in all, as JSON (bench/results/chaos.json) and as the
Markdown tables printed on stdout and pasted into docs/reliability.md. Pure."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchlib import markdown_table
from chaos import schedule
from chaos.causes import Cause, Failure, Kill, count
from chaos.harness import CliCall
from chaos.schedule import Step

FAILURES_SHOWN = 20
"""Failures listed per step in the JSON (all are counted), enough to place them in time."""


@dataclass
class StepResult:
    step: Step
    started_s: float
    ended_s: float
    calls: list[CliCall]
    notes: list[str]
    violations: dict[str, list[str]]
    """Invariant (or `exit_codes`, `supervisor_alive`, `status_cli`) -> what was wrong."""
    requests: int
    failures: list[Failure]
    longest_without_live_s: float
    aborted: bool = False
    """No supervisor could be started on the state dir after this step: the run ended."""

    def failed_by_cause(self, kills: Sequence[Kill]) -> dict[str, int]:
        return count(self.failures, kills)

    def to_json(self, kills: Sequence[Kill]) -> dict[str, Any]:
        return {**self.step.to_json(), "describe": self.step.describe(),
                "duration_s": round(self.ended_s - self.started_s, 2),
                "cli": [c.to_json() for c in self.calls], "notes": self.notes,
                "violations": self.violations, "requests": self.requests,
                "failed": len(self.failures),
                "failed_by_cause": self.failed_by_cause(kills),
                "longest_without_live_s": round(self.longest_without_live_s, 3),
                "aborted": self.aborted,
                "first_failures": [
                    {**f.to_json(), "after_start_s": round(f.t_s - self.started_s, 3)}
                    for f in self.failures[:FAILURES_SHOWN]]}


@dataclass
class Report:
    seed: int
    settings: dict[str, Any]
    steps: list[StepResult]
    requests: int
    ok: int
    retried: int
    refused_connects: int
    failures: list[Failure]
    failed: int
    """All failed requests (`failures` may keep fewer: `chaos.load.MAX_FAILURES_KEPT`)."""
    kills: list[Kill]
    longest_without_live_s: float
    longest_without_live_step: int | None
    supervisor_starts: int
    duration_s: float
    after_stop: list[str] = field(default_factory=list)
    """What was left once the supervisor had stopped (processes, files)."""
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def failed_by_cause(self) -> dict[str, int]:
        return count(self.failures, self.kills)

    @property
    def violations(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [
            {"step": r.step.index, "fault": r.step.fault.value, "variant": r.step.variant,
             "invariant": name, "problems": problems, "seed": self.seed}
            for r in self.steps for name, problems in r.violations.items()]
        if self.after_stop:
            out.append({"step": None, "fault": "stop", "variant": "", "invariant": "after_stop",
                        "problems": self.after_stop, "seed": self.seed})
        return out

    @property
    def aborted(self) -> bool:
        return bool(self.steps) and self.steps[-1].aborted

    @property
    def refused(self) -> int:
        return self.failed_by_cause[Cause.REFUSED]

    def reproduce(self) -> str:
        kinds = self.settings.get("kinds")
        # The planned steps, not those run: the schedule depends on its length.
        steps = self.settings.get("steps", len(self.steps))
        return (f"python bench/chaos_run.py --seed {self.seed} --steps {steps}"
                + (f" --kinds {kinds}" if kinds and kinds != "all" else ""))

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "reproduce": self.reproduce(), "settings": self.settings,
            "steps": len(self.steps), "aborted": self.aborted,
            "faults_by_kind": schedule.by_kind(r.step for r in self.steps),
            "requests": self.requests, "ok": self.ok, "failed": self.failed,
            "failed_by_cause": self.failed_by_cause, "retried": self.retried,
            "refused_connections": self.refused_connects,
            "longest_without_live_s": round(self.longest_without_live_s, 3),
            "longest_without_live_step": self.longest_without_live_step,
            "supervisor_starts": self.supervisor_starts,
            "duration_s": round(self.duration_s, 1),
            "violations": self.violations,
            "exit_codes": _exit_codes(self.steps),
            "kills": [{"t_s": round(k.t_s, 4), "epoch": k.epoch, "pid": k.pid}
                      for k in self.kills],
            "machine": self.machine,
            "step_results": [r.to_json(self.kills) for r in self.steps],
        }

    def summary_table(self) -> str:
        causes = self.failed_by_cause
        kinds = schedule.by_kind(r.step for r in self.steps)
        rows: list[Sequence[object]] = [
            ("seed", self.seed),
            ("steps", len(self.steps) if not self.aborted else
             f"{len(self.steps)} of {self.settings.get('steps')}: no supervisor could be "
             f"started again after step {self.steps[-1].step.index}, the run stopped"),
            ("faults by kind", ", ".join(f"{k} {n}" for k, n in kinds.items() if n)),
            ("requests", f"{self.requests:,}"),
            ("failed requests", f"{self.failed:,}"),
            *((f"- {cause}", f"{n:,}") for cause, n in causes.items()),
            ("refused connections (connect() calls, retries included)",
             f"{self.refused_connects:,}"),
            ("retried after a keep-alive close (not failed)", f"{self.retried:,}"),
            ("longest time without a LIVE generation",
             f"{self.longest_without_live_s:.2f} s"
             + (f" (step {self.longest_without_live_step})"
                if self.longest_without_live_step is not None else "")),
            ("invariant violations", len(self.violations)),
            ("supervisor starts", self.supervisor_starts),
            ("duration", f"{self.duration_s:.0f} s"),
            ("reproduce", f"`{self.reproduce()}`"),
        ]
        return markdown_table(("what", "figure"), rows)

    def steps_table(self) -> str:
        rows = []
        for r in self.steps:
            causes = {k: n for k, n in r.failed_by_cause(self.kills).items() if n}
            rows.append((r.step.index,
                         r.step.fault.value + (f"/{r.step.variant}" if r.step.variant else ""),
                         " ".join(str(c.exit_code) + ("" if c.as_expected else "!")
                                  for c in r.calls) or "-",
                         f"{r.requests:,}",
                         ", ".join(f"{k} {n}" for k, n in causes.items()) or "0",
                         f"{r.longest_without_live_s:.2f}",
                         "; ".join(sorted(r.violations)) or "-"))
        return markdown_table(("step", "fault", "exit codes", "requests", "failed by cause",
                               "s without LIVE", "violations"), rows)


def _exit_codes(steps: Sequence[StepResult]) -> dict[str, dict[str, int]]:
    """Per fault kind, how often each exit code came back."""
    out: dict[str, Counter[str]] = {}
    for r in steps:
        for call in r.calls:
            out.setdefault(r.step.fault.value, Counter())[str(call.exit_code)] += 1
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


def violations_text(violations: Sequence[Mapping[str, Any]]) -> str:
    return "\n".join(f"step {v['step']} ({v['fault']}{'/' + v['variant'] if v['variant'] else ''},"
                     f" seed {v['seed']}): {v['invariant']}: {'; '.join(v['problems'])}"
                     for v in violations)


START_MARK = "<!-- chaos:start -->"
END_MARK = "<!-- chaos:end -->"


def docs_section(report: Report, command: str) -> str:
    """The Markdown between the markers of docs/reliability.md: what was run, the figures,
    the exit codes by fault, and every violation by invariant."""
    machine = report.machine
    kinds = schedule.by_kind(r.step for r in report.steps)
    codes = _exit_codes(report.steps)
    code_rows = [(k, ", ".join(f"{c}: {n}" for c, n in v.items())) for k, v in codes.items()]
    by_invariant: dict[str, list[dict[str, Any]]] = {}
    for v in report.violations:
        by_invariant.setdefault(v["invariant"], []).append(v)
    violation_rows = [
        (name, len(vs), ", ".join(str(v["step"]) for v in vs[:12]) + (" ..." if len(vs) > 12
                                                                         else ""),
         str(vs[0]["problems"][0])[:160].replace("|", "/"))
        for name, vs in sorted(by_invariant.items())]
    lines = [
        START_MARK,
        "## The chaos run (issue 17)",
        "",
        f"`{command}` ({machine.get('date_utc', '?')}, {report.duration_s / 60:.1f} min on "
        f"this {machine.get('cpus', '?')}-CPU machine; `bench/results/chaos.json` has every "
        f"step). One supervisor on a sidecar config (a static listener beside a listener, "
        f"route, cluster and endpoints from a real ADS server), "
        f"{report.settings.get('load', {}).get('keepalive_lanes')} keep-alive and "
        f"{report.settings.get('load', {}).get('new_connection_lanes')} new-connection "
        f"load lanes for the whole run, {len(report.steps)} steps of a schedule drawn from "
        f"seed {report.seed}: each an upgrade (1.39.3 or 1.40.0) with at most one fault "
        f"({', '.join(f'{k} {n}' for k, n in kinds.items() if n)}). After every step: one "
        f"LIVE generation, the ports accept, status and state file agree, no orphan process, "
        f"the supervisor's fds steady, no leaked socket or shared-memory file, the live "
        f"generation's parent socket answered and its admin API LIVE. The short form is "
        f"`tests/integration/test_chaos.py`.",
        "",
        report.summary_table(),
        "",
        "Exit codes of the `meshctl upgrade` commands, by fault:",
        "",
        markdown_table(("fault", "exit code: commands"), code_rows),
        "",
    ]
    if violation_rows:
        lines += ["Invariants violated (steps listed; the first problem as the run wrote it):",
                  "",
                  markdown_table(("invariant", "steps", "which", "first"), violation_rows),
                  ""]
    else:
        lines += ["No invariant was violated.", ""]
    lines.append(END_MARK)
    return "\n".join(lines)


def replace_section(text: str, section: str) -> str:
    """`text` with what lies between the markers (markers included) replaced by `section`, or
    `section` appended when the markers are absent."""
    start, end = text.find(START_MARK), text.find(END_MARK)
    if start < 0 or end < start:
        return text.rstrip("\n") + "\n\n" + section + "\n"
    return text[:start] + section + text[end + len(END_MARK):]

