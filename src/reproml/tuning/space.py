"""Search spaces, one define-by-run function per model.

Each space suggests only keys of that model's `train.<section>` in params.yaml, so a best trial
becomes a params override that pydantic validates like any other. Boosting round counts are not
searched: early stopping on the validation split picks them, in trials and in the final fit.

A space is code, so resuming a study after the code changed could silently mix two spaces. Its
signature, the distributions a `SpaceRecorder` collects by running the function once without
training anything, is stored on the study and compared on every resume.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from optuna.distributions import (
    BaseDistribution,
    CategoricalChoiceType,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)


class Suggester(Protocol):
    """What a space needs of a trial: `optuna.Trial` and `SpaceRecorder` both provide it."""

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_categorical(
        self, name: str, choices: Sequence[CategoricalChoiceType]
    ) -> CategoricalChoiceType: ...


def xgboost_space(trial: Suggester) -> dict[str, Any]:
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
        "max_depth": trial.suggest_int("max_depth", 3, 10),
        "min_child_weight": trial.suggest_float("min_child_weight", 1.0, 300.0, log=True),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.4, 1.0),
        "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 100.0, log=True),
    }


def hist_gradient_boosting_space(trial: Suggester) -> dict[str, Any]:
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
        "max_leaf_nodes": trial.suggest_int("max_leaf_nodes", 15, 255, log=True),
        "min_samples_leaf": trial.suggest_int("min_samples_leaf", 5, 300, log=True),
        "l2_regularization": trial.suggest_float("l2_regularization", 1e-3, 10.0, log=True),
    }


def random_forest_space(trial: Suggester) -> dict[str, Any]:
    return {
        "n_estimators": trial.suggest_int("n_estimators", 50, 400, log=True),
        "max_depth": trial.suggest_int("max_depth", 4, 24),
        "min_samples_leaf": trial.suggest_int("min_samples_leaf", 1, 100, log=True),
        "max_features": trial.suggest_float("max_features", 0.2, 1.0),
    }


def linear_space(trial: Suggester) -> dict[str, Any]:
    return {"C": trial.suggest_float("C", 1e-3, 100.0, log=True)}


SPACES: dict[str, Callable[[Suggester], dict[str, Any]]] = {
    "xgboost": xgboost_space,
    "hist_gradient_boosting": hist_gradient_boosting_space,
    "random_forest": random_forest_space,
    "logistic": linear_space,
    "linear": linear_space,
}


class SpaceRecorder:
    """A stand-in trial that records each distribution asked for and answers its lower bound."""

    def __init__(self) -> None:
        self.distributions: dict[str, BaseDistribution] = {}

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        self.distributions[name] = FloatDistribution(low, high, log=log, step=step)
        return low

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        self.distributions[name] = IntDistribution(low, high, log=log, step=step)
        return low

    def suggest_categorical(
        self, name: str, choices: Sequence[CategoricalChoiceType]
    ) -> CategoricalChoiceType:
        self.distributions[name] = CategoricalDistribution(choices)
        return choices[0]


def distributions(model: str) -> dict[str, BaseDistribution]:
    recorder = SpaceRecorder()
    SPACES[model](recorder)
    return recorder.distributions


def signature(model: str) -> str:
    """The space as canonical JSON, stored on the study to detect a changed space on resume."""
    return json.dumps(
        {name: json.loads(distribution_to_json(d)) for name, d in sorted(distributions(model).items())},
        sort_keys=True,
    )


def space_changes(stored: str, current: str) -> list[str]:
    """Which parameters differ between two signatures, each said in words."""
    old, new = json.loads(stored), json.loads(current)
    changes = [f"{k} added" for k in sorted(set(new) - set(old))]
    changes += [f"{k} removed" for k in sorted(set(old) - set(new))]
    changes += [f"{k}: {old[k]} -> {new[k]}" for k in sorted(set(old) & set(new)) if old[k] != new[k]]
    return changes


def within(model: str, values: dict[str, Any]) -> dict[str, Any] | None:
    """`values` restricted to the space's parameters, or None if one is missing or out of range."""
    picked: dict[str, Any] = {}
    for name, dist in distributions(model).items():
        if name not in values or values[name] is None:
            return None
        value = values[name]
        if isinstance(dist, IntDistribution):
            if float(value) != int(float(value)):
                return None
            value = int(float(value))
        elif isinstance(dist, FloatDistribution):
            value = float(value)
        try:
            inside = dist._contains(dist.to_internal_repr(value))
        except (TypeError, ValueError):
            return None
        if not inside:
            return None
        picked[name] = value
    return picked
