"""The MLflow store: the only place in reproml that imports `mlflow` (an import contract says so).

`connection` (where the tracking store is, `setup`, a locked store made clear), `runs` (runs,
params, metrics, artifacts, search; `Run` records), `models` (datasets, logging, hashing, fetching
and loading models) and `versions` (the model registry's versions, aliases and tags; `Version`
records). Nothing is imported here, so `import reproml.stores.mlflow.connection` loads only what it
needs.
"""
