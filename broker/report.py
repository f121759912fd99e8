"""A check's report: what ``check`` prints, what the diagnostics route answers, what ``check --remote`` reads back.

One shape for all three, so a report made inside the app reads the same on an operator's laptop.
Holds names, versions, lengths, fingerprints and verdicts: never a secret or a token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.config import Setting


@dataclass
class CheckReport:
    provider: str
    ok: bool = False
    verdict: str = ""
    warnings: list[str] = field(default_factory=list)
    secrets: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    token: dict[str, Any] | None = None
    # Filled in by the diagnostics route (broker.diagnostics), which runs inside the app.
    cache: dict[str, Any] | None = None
    fleet: dict[str, Any] | None = None
    instance: dict[str, Any] | None = None
    # Seconds since the report was made, when an earlier report is served again (the route's rate limit).
    age_s: float | None = None

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def fail(self, verdict: str) -> None:
        self.ok = False
        self.verdict = verdict

    def as_dict(self) -> dict[str, Any]:
        report = {
            "provider": self.provider,
            "ok": self.ok,
            "verdict": self.verdict,
            "warnings": self.warnings,
            "secrets": self.secrets,
            "attempts": self.attempts,
            "problems": self.problems,
            "advice": self.advice,
            "token": self.token,
        }
        for name in ("cache", "fleet", "instance", "age_s"):
            if getattr(self, name) is not None:
                report[name] = getattr(self, name)
        return report

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckReport:
        """A report as :meth:`as_dict` wrote it (``check --remote`` reads the route's answer with this)."""
        report = cls(provider=str(data.get("provider", "?")))
        report.ok = data.get("ok") is True
        report.verdict = str(data.get("verdict", ""))
        for name in ("warnings", "secrets", "attempts", "problems", "advice"):
            value = data.get(name)
            if isinstance(value, list):
                setattr(report, name, value)
        for name in ("token", "cache", "fleet", "instance"):
            value = data.get(name)
            if isinstance(value, dict):
                setattr(report, name, value)
        age = data.get("age_s")
        report.age_s = float(age) if isinstance(age, (int, float)) and not isinstance(age, bool) else None
        return report

    def render(self, *, with_verdict: bool = True) -> str:
        lines = [f"provider {self.provider}: {'OK' if self.ok else 'FAILED'}"]
        lines += [f"  warning: {w}" for w in self.warnings]
        for s in self.secrets:
            notes = "; ".join(s["problems"]) or "looks clean"
            state = "" if s.get("enabled", True) else "disabled, "
            created = f"created {s['created']}, " if s.get("created") else ""
            lines.append(
                f"  secret {s['name']} version {s['version']}: {s['length']} chars, sha256 {s['sha256']}, "
                f"{state}{created}{notes}"
            )
        for a in self.attempts:
            latency = f" ({a['latency_ms']:.0f} ms)" if isinstance(a.get("latency_ms"), (int, float)) else ""
            lines.append(f"  tried {a['variant']}: {a['result']}{latency}")
        if self.token:
            fp = f", sha256 {self.token['sha256']}" if self.token.get("sha256") else ""
            lines.append(f"  token: {self.token['token_type']}, lifetime {self.token['lifetime_s']} s{fp}")
            if "jwt_header" in self.token:
                lines.append(f"  JWT header: {self.token['jwt_header']}")
                lines.append(f"  JWT claims: {self.token['jwt_claims']}")
        if self.cache is not None:
            lines.append(f"  cache: {self.cache.get('summary', self.cache)}")
        if self.fleet is not None:
            lines.append(f"  fleet cache: {self.fleet.get('summary', self.fleet)}")
        if self.instance is not None:
            lines.append(f"  instance: {self.instance.get('summary', self.instance)}")
        if self.age_s is not None:
            lines.append(f"  report: made {self.age_s:.0f} s ago (one diagnostics run per provider per 60 s)")
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  do: {a}" for a in self.advice]
        if with_verdict:
            lines.append(f"verdict: {self.verdict}")
        return "\n".join(lines)


def unknown_provider_verdict(name: str, providers: list[str]) -> str:
    return f"add provider {name!r} to {Setting.PROVIDERS} (now: {', '.join(providers)}), or check its spelling"
