"""One module per DVC stage: read inputs, call the pure modules, write outputs atomically.

DVC calls these through the CLI (`reproml <stage>`); tests and, later, Prefect flows call them
directly. Each validates all of params.yaml first and writes nothing until its work succeeded.
Keeping a module per stage lets dvc.yaml list exactly the code each stage depends on.
"""
