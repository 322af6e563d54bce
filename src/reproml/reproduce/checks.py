"""What a reproduction found: one Check per compared item, and the verdict they add up to (pure).

A run reproduces when its lineage (code, data, params) and its outcome (metrics, predictions) are
the same; a different environment (library versions, lock file) is named only when the outcome
differs, because it may explain the difference. The comparisons here take plain values; the
rebuild (`reproduce.rebuild`) gathers them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reproml.errors import ReproError
from reproml.reproduce.record import Recorded

LINEAGE = ("code", "data", "params")
ENVIRONMENT = ("libraries", "uv.lock")
OUTCOME = ("metrics", "predictions")
ASPECTS = (*LINEAGE, *ENVIRONMENT, *OUTCOME)
TOLERANCE = 1e-12


@dataclass(frozen=True)
class Check:
    """One compared item: what the run recorded against what the rebuild gave."""

    aspect: str  # one of ASPECTS
    item: str  # e.g. a data path, a metric name, "sha256"
    recorded: str
    rebuilt: str
    same: bool
    detail: str = ""


@dataclass(frozen=True)
class Reproduction:
    """The outcome of `reproduce`: every check, notes, and the failure of the rebuild if any."""

    run_id: str
    commit: str
    checks: tuple[Check, ...]
    notes: tuple[str, ...] = ()
    failure: str | None = None  # the rebuild itself failed: which stage, with its output's tail
    kept: Path | None = None  # the worktree, when asked to keep it

    @property
    def outcome_same(self) -> bool:
        return self.failure is None and all(c.same for c in self.checks if c.aspect in OUTCOME)

    @property
    def differences(self) -> list[str]:
        """Differing aspects in report order; `rebuild` last when the rebuild failed."""
        differing = {c.aspect for c in self.checks if not c.same}
        named = [a for a in ASPECTS if a in differing and (a not in ENVIRONMENT or not self.outcome_same)]
        return [*named, "rebuild"] if self.failure else named

    @property
    def identical(self) -> bool:
        return not self.differences

    def of(self, aspect: str) -> list[Check]:
        return [c for c in self.checks if c.aspect == aspect]


def close(a: float, b: float) -> bool:
    """Equal within 1e-12, NaN equal to NaN: the same metric computed twice on the same data."""
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOLERANCE


def diff_keys(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def flat(raw: Any) -> dict[str, str]:
    """Params as `section.key` strings: validated and resolved when this code can, else as given."""
    from reproml.config import flat_params, flatten, parse_params

    try:
        return flat_params(parse_params(raw))
    except ReproError:
        return flatten(raw if isinstance(raw, dict) else {})


def compare_code(recorded: Recorded, rebuilt_hash: str) -> Check:
    same = recorded.tags["reproml.code_sha256"] == rebuilt_hash
    detail = "" if same else f"{recorded.commit[:7]} does not hold the code that ran"
    return Check("code", "sha256", recorded.tags["reproml.code_sha256"], rebuilt_hash, same, detail)


def compare_params(
    recorded: Recorded, rebuilt_hash: str, rebuilt_seed: str, rebuilt_params: dict[str, str]
) -> list[Check]:
    """Hash, seed and every logged key: a run whose params.json no longer matches what MLflow
    logged (and what produced its metrics) differs by key even where the hashes agree."""
    recorded_hash, recorded_seed = recorded.tags["reproml.params_sha256"], recorded.tags["reproml.seed"]
    checks = [
        Check("params", "sha256", recorded_hash, rebuilt_hash or "-", recorded_hash == rebuilt_hash),
        Check("params", "seed", recorded_seed, rebuilt_seed or "-", recorded_seed == rebuilt_seed),
    ]
    for key in diff_keys(recorded.params, rebuilt_params) if rebuilt_params else []:
        a, b = recorded.params.get(key, "(absent)"), rebuilt_params.get(key, "(absent)")
        checks.append(Check("params", key, a, b, False, "logged by the run vs used by the rebuild"))
    return checks


def compare_libraries(recorded_json: str | None, rebuilt: dict[str, str]) -> Check:
    if not recorded_json:
        return Check("libraries", "versions", "(not recorded)", f"{len(rebuilt)} packages", True)
    before: dict[str, str] = json.loads(recorded_json)
    differ = diff_keys(before, rebuilt)
    shown = ", ".join(f"{n} {before.get(n, '-')} -> {rebuilt.get(n, '-')}" for n in differ)
    counts = f"{len(before)} packages", f"{len(rebuilt)} packages"
    return Check("libraries", "versions", counts[0], counts[1], not differ, shown)


def compare_uv_lock(recorded: str | None, current: str | None) -> Check:
    """The run's uv.lock against the one this environment (which runs the rebuild) came from."""
    same = (recorded or "") == (current or "")
    detail = "" if same else "this environment was installed from another uv.lock"
    return Check("uv.lock", "sha256", recorded or "(not recorded)", current or "(none)", same, detail)


def compare_metrics(recorded: dict[str, float], rebuilt: dict[str, float]) -> list[Check]:
    """Every test-split metric, equal within 1e-12."""
    names = sorted(k for k in set(recorded) | set(rebuilt) if k.startswith("test_"))
    checks = []
    for name in names:
        a, b = recorded.get(name), rebuilt.get(name)
        same = a is not None and b is not None and close(a, b)
        text = ["-" if v is None else f"{v:.10g}" for v in (a, b)]
        delta = "" if same or a is None or b is None else f"{b - a:+.3g}"
        checks.append(Check("metrics", name, text[0], text[1], same, delta))
    return checks


def compare_predictions(recorded: str, rebuilt: str) -> Check:
    return Check("predictions", "test sha256", recorded, rebuilt or "-", recorded == rebuilt)


def with_environment_notes(result: Reproduction) -> Reproduction:
    """When the outcome is the same, a different environment is worth a note, not a verdict."""
    if not result.outcome_same:
        return result
    extra = [
        f"{c.aspect} differ but the outcome is the same: {c.detail}"
        for c in result.checks
        if c.aspect in ENVIRONMENT and not c.same
    ]
    return dataclasses.replace(result, notes=(*result.notes, *extra))
