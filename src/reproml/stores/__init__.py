"""The stores layer: one module per outside system, the only modules that talk to it.

`git` runs the git executable; `dvc` opens the project's DVC repository through `dvc.repo.Repo`
(config, cache, remotes, dvc.lock); `mlflow/` is the MLflow tracking store and model registry
(the only modules importing `mlflow`); `optuna` opens the Optuna storage studies live in.
Everything above this layer asks these modules, so a change in how a system is reached (a flag,
an API, an error message) is made in one place.
"""
