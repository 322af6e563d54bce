"""The champion's reference profile: everything monitoring compares a batch against, computed once
per champion and kept under `monitoring/<model>/reference/<key>/`.

Every batch is judged against the same things for as long as a champion serves: the schema read
off its training rows, what the quality gate needs of them (categories seen, missing shares,
labels), the category groups drift compares in, the drift reference (the newest
`monitor.reference_days` of what it learned, sampled to `monitor.reference_rows` and scored by the
champion) and the quality reference (its test split, sampled to `monitor.sample_rows`, scored by
the model whose test scores the gate saw). Computing them means opening the DVC cache, hashing and
reading every split it learned and scoring two samples: seconds of every check that change only
when the champion does. So they are computed on the first batch a champion judges and read back
after.

The key is the champion's run id (which fixes every data version it learned, by md5) and the md5 of
the parameters the profile depends on (`monitor:` and the seed, with this module's format
version): a new champion or a changed `monitor.reference_days` gets a profile of its own, never an
older one. The files are written atomically, `profile.json` last; it records the md5 of each
parquet file, checked on every read, so a partial, stale or altered profile is rebuilt rather
than used.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pandas as pd

from reproml import learned
from reproml.config import Params
from reproml.errors import ReproError
from reproml.features import CategoryLevels, category_levels
from reproml.io import file_md5, read_json, write_json, write_parquet
from reproml.monitoring import champion, quality, scores, store
from reproml.monitoring.records import WindowRecord

FORMAT = 1  # bump when what a profile holds, or how it is computed, changes
PROFILE, DRIFT, TEST = "profile.json", "drift_reference.parquet", "test_reference.parquet"


@dataclass(frozen=True)
class Profile:
    """What every batch of one champion is compared against (see the module docstring)."""

    key: str
    schema: quality.Schema
    stats: quality.ReferenceStats
    levels: dict[str, CategoryLevels]  # category column -> the groups drift compares in
    rows: int  # rows the champion learned
    window: WindowRecord  # the drift window: rows, days, first, last
    drift_reference: pd.DataFrame  # the drift reference sample, with the champion's scores
    test_reference: pd.DataFrame  # the test split (sampled), scored by `best.reference_model`
    built: bool  # computed by this call (False: read back)


def sample(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """At most `rows` rows, uniform without replacement, in their original order; deterministic."""
    import numpy as np

    if len(frame) <= rows:
        return frame
    picked = np.sort(np.random.default_rng(seed).choice(len(frame), size=rows, replace=False))
    return frame.iloc[picked].reset_index(drop=True)


def key(best: champion.Champion, params: Params) -> str:
    """`<run id>-<md5 of what the profile depends on>[:12]`."""
    # where batches arrive from (`monitor.feed`) changes no statistic: not part of the key
    watched = params.monitor.model_dump(mode="json", exclude={"feed"})
    depends = {"format": FORMAT, "seed": params.seed, "monitor": watched}
    digest = hashlib.md5(json.dumps(depends, sort_keys=True, default=str).encode()).hexdigest()
    return f"{best.run_id}-{digest[:12]}"


def folder(best: champion.Champion, params: Params) -> Path:
    """`monitoring/<model>/reference/<key>`, relative to the project root."""
    return store.home(best.name) / "reference" / key(best, params)


def window_of(frame: pd.DataFrame, time_column: str | None, days: int | None) -> WindowRecord:
    """The drift reference's rows and time range, for the record."""
    out: WindowRecord = {"rows": len(frame), "days": days, "first": None, "last": None}
    if time_column and time_column in frame.columns and len(frame):
        out |= {"first": frame[time_column].min().isoformat(), "last": frame[time_column].max().isoformat()}
    return out


def load_or_build(root: Path, best: champion.Champion, params: Params) -> Profile:
    """The champion's profile: read back when a valid one is kept, else computed and kept."""
    home = root / folder(best, params)
    kept = _read(home, best, params)
    if kept is not None:
        return kept
    made = build(root, best, params)
    _write(home, best, made)
    return made


def build(root: Path, best: champion.Champion, params: Params) -> Profile:
    """Compute the profile from the exact data versions the champion learned and was tested on."""
    from reproml.monitoring import drift
    from reproml.scoring import predict_scores

    label = f"champion v{best.version} (run {best.run_id})"
    watch, seed = params.monitor, params.seed
    reference = champion.load_learned(root, best, label)
    schema = quality.schema_of(
        reference, best.input_columns, best.time_column, best.target, best.task, best.classes
    )
    encoded = category_levels(best.model) or {}  # the champion's own groups; else sklearn's rule
    levels = {
        c: encoded.get(c) or drift.reference_levels(reference[c], best.max_categories)
        for c in schema.categorical
    }
    window = learned.recent(reference, best.time_column, watch.reference_days)
    ref = sample(window, watch.reference_rows, seed)
    ref = scores.with_scores(
        ref, predict_scores(best.model, ref[best.input_columns], best.task), best.classes
    )
    test = champion.load_split(root, champion.TEST, best.data_md5[champion.TEST], label)
    test = sample(test, watch.sample_rows, seed)  # all of it, normally: the value evaluate logged
    test = scores.with_scores(  # a refit learned the test split: its parent's scores
        test, predict_scores(best.reference_model, test[best.input_columns], best.task), best.classes
    )
    return Profile(
        key=key(best, params),
        schema=schema,
        stats=quality.ReferenceStats.of(reference, schema),
        levels=levels,
        rows=len(reference),
        window=window_of(window, best.time_column, watch.reference_days),
        drift_reference=ref,
        test_reference=test,
        built=True,
    )


def _write(home: Path, best: champion.Champion, made: Profile) -> None:
    """The two samples, then `profile.json` naming their md5s (a reader trusts nothing before it)."""
    drift_file = write_parquet(home / DRIFT, made.drift_reference)
    test_file = write_parquet(home / TEST, made.test_reference)
    schema = made.schema
    write_json(
        home / PROFILE,
        {
            "format": FORMAT,
            "key": made.key,
            "champion": {"name": best.name, "version": best.version, "run_id": best.run_id},
            "learned": best.learned_splits,
            "test": best.data_md5[champion.TEST],
            "schema": {
                "numeric": schema.numeric,
                "categorical": schema.categorical,
                "time_column": schema.time_column,
                "target": schema.target,
                "task": schema.task,
                "classes": None if schema.classes is None else list(schema.classes),
            },
            "stats": made.stats.to_dict(),
            "levels": {
                c: {"kept": sorted(v.kept), "pooled": sorted(v.pooled)} for c, v in made.levels.items()
            },
            "rows": made.rows,
            "window": made.window,
            "files": {DRIFT: file_md5(drift_file), TEST: file_md5(test_file)},
        },
    )


def test_reference_of(root: Path, name: str, profile_key: str) -> pd.DataFrame | None:
    """The scored test split kept in model `name`'s profile `profile_key` (a record names the key of
    the champion that judged it), or None when that profile is gone or its file's bytes changed."""
    home = root / store.home(name) / "reference" / profile_key
    try:
        data = read_json(home / PROFILE)
        if data.get("format") != FORMAT or data.get("key") != profile_key:
            return None
        if file_md5(home / TEST) != data["files"][TEST]:
            return None
        return pd.read_parquet(home / TEST)
    except (OSError, ValueError, KeyError, TypeError, ReproError):
        return None


def _read(home: Path, best: champion.Champion, params: Params) -> Profile | None:
    """The kept profile, or None when there is none or it is not exactly this champion's (another
    key, another data version, a file whose bytes changed): then it is computed again."""
    try:
        data = read_json(home / PROFILE)
        if (
            data.get("format") != FORMAT
            or data.get("key") != key(best, params)
            or data.get("learned") != best.learned_splits
            or data.get("test") != best.data_md5[champion.TEST]
        ):
            return None
        for name, md5 in data["files"].items():
            if file_md5(home / name) != md5:
                return None
        s = data["schema"]
        classes = None if s["classes"] is None else tuple(s["classes"])
        schema = quality.Schema(list(s["numeric"]), list(s["categorical"]), s["time_column"], s["target"],
                                s["task"], classes)  # fmt: skip
        levels = {
            str(c): CategoryLevels(frozenset(v["kept"]), frozenset(v["pooled"]))
            for c, v in data["levels"].items()
        }
        return Profile(
            key=str(data["key"]),
            schema=schema,
            stats=quality.ReferenceStats.from_dict(data["stats"]),
            levels=levels,
            rows=int(data["rows"]),
            window=cast(WindowRecord, data["window"]),
            drift_reference=pd.read_parquet(home / DRIFT),
            test_reference=pd.read_parquet(home / TEST),
            built=False,
        )
    except (OSError, ValueError, KeyError, TypeError, ReproError):
        return None
