"""params.yaml validation: every mistake names its key path, the value and what was expected."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from reproml.config import Params, flat_params, load_params, parse_params
from reproml.errors import ConfigError, ReproError
from tests.conftest import REPO, default_params


def _flat_keys(raw: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            keys |= _flat_keys(value, path)
        else:
            keys.add(path)
    return keys


def test_committed_params_equal_code_defaults() -> None:
    params = load_params(REPO / "params.yaml")
    assert params == Params()
    assert flat_params(params) == flat_params(Params())


def test_committed_params_document_every_key() -> None:
    """Every setting the code knows appears in params.yaml, so the file is the full reference."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert _flat_keys(raw) == set(flat_params(Params()))


def test_error_classes_are_repro_errors() -> None:
    assert issubclass(ConfigError, ReproError)


def test_empty_document_means_defaults() -> None:
    assert parse_params(None) == Params()


def test_non_mapping_document_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"my\.yaml: expected a mapping of sections, got list"):
        parse_params(["seed", 1], "my.yaml")


def test_unknown_top_level_key() -> None:
    raw = default_params()
    raw["sead"] = 7
    with pytest.raises(ConfigError, match=r"params\.yaml is invalid:\s+sead: unknown key \(value 7\)"):
        parse_params(raw)


def test_unknown_nested_key_names_full_path() -> None:
    raw = default_params()
    raw["train"]["xgboost"]["max_detph"] = 6
    with pytest.raises(ConfigError, match=r"train\.xgboost\.max_detph: unknown key \(value 6\)") as info:
        parse_params(raw, "custom.yaml")
    assert str(info.value).startswith("custom.yaml is invalid")


def test_wrong_type_names_key_value_and_expectation() -> None:
    raw = default_params()
    raw["train"]["xgboost"]["max_depth"] = "six"
    with pytest.raises(ConfigError, match=r"train\.xgboost\.max_depth = 'six': .*valid integer"):
        parse_params(raw)


def test_out_of_range_value_names_bound() -> None:
    raw = default_params()
    raw["train"]["xgboost"]["learning_rate"] = 0
    with pytest.raises(ConfigError, match=r"train\.xgboost\.learning_rate = 0: .*greater than 0"):
        parse_params(raw)


def test_every_error_is_reported_at_once() -> None:
    raw = default_params()
    raw["train"]["xgboost"]["max_depth"] = "six"
    raw["evaluate"]["importance_rows"] = -1
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    message = str(info.value)
    assert "train.xgboost.max_depth = 'six'" in message
    assert "evaluate.importance_rows = -1" in message


def test_invalid_enum_lists_allowed_values() -> None:
    raw = default_params()
    raw["train"]["model"] = "catboost"
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    message = str(info.value)
    assert re.search(r"train\.model = 'catboost'", message)
    for allowed in ("xgboost", "logistic", "linear", "random_forest", "hist_gradient_boosting"):
        assert f"'{allowed}'" in message


def test_load_params_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "params.yaml"
    with pytest.raises(ConfigError, match=re.escape(str(path)) + r": file not found"):
        load_params(path)


def test_load_params_broken_yaml(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seed: 42\ndata:\n  target: [late\n")
    with pytest.raises(ConfigError, match=re.escape(str(path)) + r": not valid YAML"):
        load_params(path)


def test_load_params_invalid_content_names_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\ntrain:\n  modle: xgboost\n")
    with pytest.raises(ConfigError, match=re.escape(str(path)) + r" is invalid:\s+train\.modle: unknown"):
        load_params(path)


def test_load_params_partial_file_keeps_defaults(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seed: 7\ntrain:\n  xgboost:\n    max_depth: 3\n")
    params = load_params(path)
    assert params.seed == 7
    assert params.train.xgboost.max_depth == 3
    assert params.train.xgboost.n_estimators == Params().train.xgboost.n_estimators


def test_logistic_model_rejected_for_regression() -> None:
    raw = default_params()
    raw["data"].update({"path": "data/raw/x.csv", "target": "y", "task": "regression"})
    raw["train"]["model"] = "logistic"
    with pytest.raises(ConfigError, match=r"train\.model='logistic' is for classification.*'regression'"):
        parse_params(raw)


def test_linear_model_rejected_for_classification() -> None:
    raw = default_params()
    raw["train"]["model"] = "linear"
    with pytest.raises(ConfigError, match=r"train\.model='linear' is for regression.*'classification'"):
        parse_params(raw)


def test_matching_linear_models_accepted() -> None:
    raw = default_params()
    raw["train"]["model"] = "logistic"
    assert parse_params(raw).train.model == "logistic"
    raw["data"].update({"target": "arr_delay", "task": "regression"})
    raw["train"]["model"] = "linear"
    assert parse_params(raw).train.model == "linear"


def test_prepare_dates_out_of_order() -> None:
    raw = default_params()
    raw["prepare"]["valid_end"] = "2013-04-01"
    with pytest.raises(
        ConfigError, match=r"\n  prepare\b.*expected train_end < valid_end < test_end.*2013-04-01"
    ):
        parse_params(raw)


def test_prepare_fractions_leave_training_rows() -> None:
    raw = default_params()
    raw["prepare"].update({"valid_fraction": 0.5, "test_fraction": 0.5})
    with pytest.raises(ConfigError, match=r"\n  prepare\b.*valid_fraction \+ test_fraction"):
        parse_params(raw)


def test_bundled_data_rejects_foreign_target() -> None:
    raw = default_params()
    raw["data"]["target"] = "y"
    with pytest.raises(ConfigError, match=r"\n  data\b.*the bundled flights data .*got target='y'"):
        parse_params(raw)


def test_bundled_data_rejects_task_mismatch() -> None:
    raw = default_params()
    raw["data"]["task"] = "regression"  # target stays `late`
    with pytest.raises(
        ConfigError, match=r"\n  data\b.*bundled flights data.*got target='late', task='regression'"
    ):
        parse_params(raw)


def test_user_data_accepts_any_target() -> None:
    raw = default_params()
    raw["data"].update({"path": "data/raw/x.csv", "target": "y"})
    assert parse_params(raw).data.target == "y"


def test_flat_params_uses_dotted_keys() -> None:
    raw = default_params()
    raw["train"]["xgboost"]["max_depth"] = 7
    flat = flat_params(parse_params(raw))
    assert flat["train.xgboost.max_depth"] == "7"
    assert flat["seed"] == "42"
    assert flat["data.path"] == "None"
    assert flat["prepare.train_end"] == "2013-05-01"
    assert all(isinstance(value, str) for value in flat.values())
    assert "train" not in flat and "train.xgboost" not in flat


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda raw: raw["train"]["xgboost"].update(max_detph=6), r"train\.xgboost\.max_detph: unknown key"),
        (lambda raw: raw["data"].update(task="ranking"), r"data\.task = 'ranking'"),
    ],
    ids=["unknown-key", "bad-enum"],
)
def test_stage_refuses_invalid_params(
    make_project: Callable[..., Path], mutate: Callable[[dict[str, Any]], Any], pattern: str
) -> None:
    from reproml.stages.ingest import run_ingest

    raw = default_params()
    mutate(raw)
    root = make_project(raw)
    with pytest.raises(ConfigError, match=pattern):
        run_ingest(root)
    assert [p.name for p in (root / "data").iterdir()] == ["raw"]
    assert not any((root / "data" / "raw").iterdir())
    assert not (root / "metrics").exists()
