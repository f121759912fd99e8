"""Policy-check infra/ with checkov and fail loudly on anything short of a clean, real result.

Usage: python tests/infra/run_checkov.py <path-to-checkov>

checkov exits 0 when it cannot parse a file, so the exit code alone proves nothing. This
script reads the JSON report and fails (exit 1) on:
- any failed check;
- any parsing error;
- a skipped check whose inline ``// checkov:skip=ID: reason`` suppression gives no reason;
- a report with no Bicep resources or no checks at all (checkov parsed nothing);
- a check that crashed (checkov logs "Failed to run check" and counts it as neither passed nor failed).

checkov reads `// checkov:skip=` comments inside resources only, never on a parameter, so the few
parameter-level exceptions are listed in PARAMETER_SUPPRESSIONS below, each with its reason; they are
reported as skipped, and the test that guards each one (named in the reason) keeps it honest.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
# What checkov 3.x puts in suppress_comment when `// checkov:skip=ID` has no reason after it.
CHECKOV_NO_REASON = "No comment provided"
# What checkov logs (on stderr) when a check raised instead of returning a result.
CHECK_CRASHED = re.compile(r"Failed to run check (\S+) on (\S+)")
# (check id, file name, parameter) -> why the failure is not a finding.
PARAMETER_SUPPRESSIONS: dict[tuple[str, str, str], str] = {
    ("CKV_AZURE_131", "keyvault.bicep", "fleetCacheKey"): (
        "the default is newGuid() values, drawn anew at each deployment (newGuid() is allowed only as a "
        "parameter default), never a hard-coded value; Microsoft's ARM template test for secure parameters "
        "accepts newGuid() defaults, checkov's port does not; tests/infra/test_bicep_policy.py asserts the "
        "default is newGuid() calls only"
    ),
}


def suppression(check: dict[str, Any]) -> str | None:
    """The reason a failed parameter check is an accepted exception, or None."""
    where = Path(str(check.get("repo_file_path") or check.get("file_path") or "")).name
    parameter = str(check.get("resource") or "").rsplit(".", 1)[-1]
    return PARAMETER_SUPPRESSIONS.get((check["check_id"], where, parameter))


def run_checkov(checkov: str) -> tuple[int, str, str]:
    """Run checkov over infra/ and return (exit code, stdout, stderr)."""
    command = [checkov, "-d", str(INFRA), "--framework", "bicep", "--skip-download", "-o", "json"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)  # noqa: S603
    return done.returncode, done.stdout, done.stderr


def parse_reports(stdout: str) -> list[dict[str, Any]]:
    """checkov prints one report (a dict) or one per framework (a list); anything else is an error."""
    start = min((i for i in (stdout.find("{"), stdout.find("[")) if i >= 0), default=-1)
    if start < 0:
        raise ValueError("checkov printed no JSON report")
    data = json.loads(stdout[start:])
    reports = data if isinstance(data, list) else [data]
    if not all(isinstance(report, dict) for report in reports):
        raise ValueError("checkov's JSON report is neither an object nor a list of objects")
    return reports


def evaluate(reports: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Return (problems, summary lines) for the reports."""
    problems: list[str] = []
    lines: list[str] = []
    bicep = [report for report in reports if report.get("check_type") == "bicep"]
    if not bicep:
        problems.append("checkov produced no bicep report: it found no Bicep files under infra/")
    passed = failed = skipped = resources = 0
    for report in bicep:
        summary = report.get("summary", {})
        results = report.get("results", {})
        passed += int(summary.get("passed", 0))
        failed += int(summary.get("failed", 0))
        skipped += int(summary.get("skipped", 0))
        resources += int(summary.get("resource_count", 0))
        for error in results.get("parsing_errors", []) or []:
            problems.append(f"parsing error (checkov skipped this file entirely): {error}")
        if summary.get("parsing_errors") and not results.get("parsing_errors"):
            problems.append(f"{summary['parsing_errors']} parsing error(s) reported in the summary")
        for check in results.get("failed_checks", []) or []:
            if reason := suppression(check):
                failed -= 1
                skipped += 1
                lines.append(f"  skipped {check['check_id']} on parameter {check.get('resource')}: {reason}")
                continue
            problems.append(
                f"FAILED {check['check_id']} {check['check_name']} "
                f"at {check.get('repo_file_path') or check.get('file_path')}:{check.get('file_line_range')} "
                f"({check.get('resource')})"
            )
        for check in results.get("skipped_checks", []) or []:
            reason = (check.get("check_result", {}).get("suppress_comment") or "").strip()
            if reason == CHECKOV_NO_REASON:
                reason = ""
            where = check.get("repo_file_path") or check.get("file_path")
            check_id = check["check_id"]
            lines.append(f"  skipped {check_id} on {check.get('resource')} ({where}): {reason or '<no reason>'}")
            if not reason:
                problems.append(f"skip of {check_id} in {where} has no reason; write '// checkov:skip={check_id}: why'")
    lines.insert(0, f"checkov bicep: {passed} passed, {failed} failed, {skipped} skipped, {resources} resources")
    if bicep and resources == 0:
        problems.append("checkov found no Bicep resources: it did not really parse infra/")
    if bicep and passed + failed + skipped == 0:
        problems.append("checkov ran no checks at all: nothing under infra/ was evaluated")
    return problems, lines


def skipped(reports: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(check id, resource) of every skipped check: checkov still runs a skipped check, and may crash on it."""
    return {
        (check["check_id"], str(check.get("resource")))
        for report in reports
        for check in (report.get("results", {}).get("skipped_checks", []) or [])
    }


def crashed(stderr: str) -> list[tuple[str, str]]:
    """(check id, where) for every check checkov could not run."""
    return CHECK_CRASHED.findall(stderr)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: run_checkov.py <path-to-checkov>", file=sys.stderr)
        return 2
    code, stdout, stderr = run_checkov(argv[1])
    try:
        reports = parse_reports(stdout)
    except ValueError as exc:
        print(f"infra-check: cannot read checkov's report ({exc}); exit code {code}", file=sys.stderr)
        print(stderr[-4000:], file=sys.stderr)
        return 1
    problems, lines = evaluate(reports)
    skips = skipped(reports)
    problems += [
        f"check {check} crashed on {where}: it was neither passed nor failed"
        for check, where in crashed(stderr)
        if (check, where.rsplit(":", 1)[-1]) not in skips
    ]
    print("\n".join(lines))
    if problems:
        print("infra-check FAILED:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print("infra-check: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
