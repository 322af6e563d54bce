"""What a retrain changes in params.yaml: the time window slides to take in the new batch.

After a labelled batch arrives, the pipeline's newest month should be that batch. The window
slides so the batch becomes the test split (both the champion and the challenger are judged on
rows neither trained on), the old test month joins validation's place and everything before it
trains: the training data grows by one batch each retrain. The validation span keeps its length
(in calendar months when the configured bounds are month starts, else in days).

The file is edited with ruamel.yaml so the comments people wrote in params.yaml survive on the
retrain branch.

Multiclass: a batch in which a class has no labelled rows is refused before anything runs
(`missing_classes`) when the promotion gate's metric needs every class (macro one-vs-rest
ROC-AUC, the default). That batch would become the test split, the challenger's metric on it
would be NaN, and the gate would reject it after a whole pipeline run with a reason that names
no cause (and leave a committed data version behind). Widening the window instead (starting the
test split earlier until every class has rows) was rejected: with the validation span kept, the
challenger's training data would end earlier than the champion's, the opposite of what a retrain
after drift is for, and windows that depend on which classes happened to occur are harder to
read than a retrain that says why it stopped. The refusal names the absent classes and what to
do (monitor a longer period, or gate on a metric defined without every class, such as `log_loss`
or `f1_macro`); the champion stays.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

import pandas as pd

from reproml.config import Params, model_section, parse_params
from reproml.errors import ConfigError
from reproml.learned import LearnedRecord, ParentRef
from reproml.registry import Registered, VersionRef


class AddedBatch(TypedDict):
    """A labelled batch the training flow added as a new DVC data version on the retrain branch."""

    file: str  # relative to the worktree
    md5: str  # what its `.dvc` file records
    window: dict[str, str]  # `Window.to_dict`: the slid time window
    commit: str | None


class Promotion(TypedDict):
    """The gate's decision as the training flow reports it (None where the decision had no such
    key); a refused flow has only the action `refused` and why."""

    action: str | None
    reason: str | None
    challenger: NotRequired[VersionRef | None]
    champion: NotRequired[VersionRef | None]
    record: NotRequired[str | None]  # the decision record's file


class RefitOutcome(TypedDict):
    """`reproml refit`'s result: the refit version, which became the champion, and its decision."""

    version: int
    run_id: str
    refit_of: ParentRef
    learned: LearnedRecord
    rounds: int | None
    fit_seconds: float
    decision: Promotion  # action, reason and record


class TrainingSummary(TypedDict):
    """What the training flow returns (and the replay reads): what was added, which stages ran,
    the data versions dvc.lock names, the challenger, the gate's decision and the refit. A flow
    refused before it started has `worktree` None and the promotion action `refused`."""

    branch: str
    worktree: str | None
    reason: str
    added: AddedBatch | None
    stages: dict[str, str]  # stage -> `ran` or `skipped`
    commit: str | None
    data_versions: dict[str, str]  # path -> md5
    challenger: Registered | None
    promotion: Promotion
    refit: RefitOutcome | None


@dataclass(frozen=True)
class Window:
    train_end: dt.date
    valid_end: dt.date
    test_end: dt.date

    def to_dict(self) -> dict[str, str]:
        return {k: v.isoformat() for k, v in vars(self).items()}


def batch_span(times: pd.Series) -> tuple[dt.date, dt.date]:
    """The whole days a batch covers: its first day, and the day after its last (excluded)."""
    if times.empty or times.isna().all():
        raise ConfigError("the labelled batch has no time values: it cannot extend a time window")
    first, last = pd.Timestamp(times.min()), pd.Timestamp(times.max())
    return first.date(), (last.normalize() + pd.Timedelta(days=1)).date()


def missing_classes(labels: pd.Series, classes: list[Any]) -> list[Any]:
    """The classes with no labelled row in `labels` (compared as monitoring compares them:
    `reproml.monitoring.quality.label_key`, so 2, 2.0 and "2" are one class)."""
    from reproml.monitoring.quality import label_key

    seen = {label_key(v) for v in labels.dropna().unique().tolist()}
    return [c for c in classes if label_key(c) not in seen]


def class_refusal(batch: str, absent: list[Any], classes: list[Any], metric: str, champion: str) -> str:
    """Why a retrain on `batch` is refused, and what would let it run."""
    return (
        f"classes {absent} have no labelled rows in {batch}, which would be the challenger's test "
        f"window; promote.metric {metric} needs every one of {classes}, so the gate could not judge "
        f"the challenger. Nothing was changed; {champion} stays. Retrain on a longer period that holds "
        "every class (e.g. `reproml monitor --batch <first day>..<last day>`, then `reproml retrain "
        "--labelled` its window), or gate on a metric defined without every class (promote.metric: "
        "log_loss or f1_macro)"
    )


def _months_between(start: dt.date, end: dt.date) -> int | None:
    if start.day != 1 or end.day != 1:
        return None
    return (end.year - start.year) * 12 + end.month - start.month


def slide(current: Window, start: dt.date, end: dt.date) -> Window:
    """The window whose test split is [start, end) and whose validation span is as long as now."""
    if start < current.test_end:
        raise ConfigError(
            f"the batch starts {start}, before prepare.test_end {current.test_end}: its rows are already "
            "part of the training window"
        )
    if not start < end:
        raise ConfigError(f"empty batch span {start}..{end}")
    months = _months_between(current.train_end, current.valid_end)
    if months is not None and start.day == 1:
        train_end = (pd.Timestamp(start) - pd.DateOffset(months=months)).date()
    else:
        train_end = start - (current.valid_end - current.train_end)
    return Window(train_end=train_end, valid_end=start, test_end=end)


def window_of(params: Params) -> Window:
    p = params.prepare
    return Window(p.train_end, p.valid_end, p.test_end)


def _yaml() -> Any:
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    return yaml


def champion_values(run_params: dict[str, str], model: str) -> dict[str, Any]:
    """The champion's `train.<model>` values, typed again, from its MLflow run's params (which
    hold the tuned values it was trained with); empty if it was another kind of model."""
    import yaml

    if run_params.get("train.model") != model:
        return {}
    prefix = f"train.{model_section(model)}."
    return {k[len(prefix) :]: yaml.safe_load(v) for k, v in run_params.items() if k.startswith(prefix)}


def edit_params(
    text: str, window: Window, tune_trials: int, fixed: dict[str, Any] | None = None
) -> tuple[str, Params]:
    """params.yaml's text for the retrain: the new window, and either a tuning budget
    (`tune_trials` > 0; the new study tries the champion's params first: `tune.warm_start`) or,
    with 0, tuning off and `fixed` (the champion's values) as `train.<model>`: a refit.

    Returns the new text and its validated Params; nothing is written here.
    """
    yaml = _yaml()
    doc = yaml.load(text)
    if not isinstance(doc, dict) or "prepare" not in doc:
        raise ConfigError("params.yaml: expected a mapping with a `prepare` section")
    if doc["prepare"].get("split", "time") != "time":
        raise ConfigError("prepare.split is not `time`: a retrain extends a time window")
    split_of = {"train_end": "train", "valid_end": "valid", "test_end": "test"}
    for key, value in window.to_dict().items():
        doc["prepare"][key] = value
        doc["prepare"].yaml_add_eol_comment(f"{split_of[key]} ends here (set by the last retrain)", key)
    tune = doc.setdefault("tune", {})
    if tune_trials > 0:
        tune["n_trials"] = tune_trials
    else:
        tune["enabled"] = False
        section = doc.setdefault("train", {}).setdefault(
            model_section(doc["train"].get("model", "xgboost")), {}
        )
        for key, value in (fixed or {}).items():
            section[key] = value
    out = io.StringIO()
    yaml.dump(doc, out)
    new_text = out.getvalue()
    import yaml as pyyaml

    return new_text, parse_params(pyyaml.safe_load(new_text), "params.yaml (retrain)")
