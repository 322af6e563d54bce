"""Whether the data source in use is committed, before a flow works on a branch made from HEAD.

`reproml retrain` and `reproml simulate` run the pipeline in a git worktree of their own branch,
created from HEAD: what they train on is the committed params.yaml and the committed data (a
`.dvc` file whose data is in the shared DVC cache, or the file itself in git), never the working
tree. Switching params.yaml to your own data without committing it would replay or retrain the
old data set; both commands refuse that up front, saying what to commit.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from reproml.config import Params, data_source, parse_params
from reproml.errors import ReproError
from reproml.stores import git


def check_committed(root: Path, params: Params, command: str) -> None:
    """Refuse `command` when HEAD's params.yaml names another data source than the working one, or
    HEAD holds neither `data.path` nor its `.dvc` file."""
    try:
        shown = git.show_file(root, "HEAD", "params.yaml")
    except git.GitError as exc:
        raise ReproError(
            f"{command} works on a git branch made from HEAD, and HEAD has no params.yaml "
            f"({exc.reason or 'not a git repository'}): commit the project first"
        ) from None
    now = data_source(params.data)
    committed = data_source(parse_params(yaml.safe_load(shown), "params.yaml at HEAD").data)
    if committed != now:
        raise ReproError(
            f"{command} works on a git branch made from HEAD, whose params.yaml names "
            f"{committed.describe()}, but the working params.yaml names {now.describe()}: commit "
            "params.yaml (and your data's .dvc file) first"
        )
    path = params.data.path
    if path is None:
        return
    if not any(git.has_file(root, "HEAD", p) for p in (path, f"{path}.dvc")):
        raise ReproError(
            f"{command} works on a git branch made from HEAD, which holds neither {path} (data.path) "
            f"nor {path}.dvc: `dvc add {path}` and commit {path}.dvc (or commit the file) first"
        )
