"""`reproml reproduce` and `reproml compare`: rebuild a recorded run, or set two runs side by side.

One module per concern:
- `record`: the run and its recorded lineage, checked to be rebuildable (MLflow tags, git commit);
- `workspace`: the throw-away git worktree the commit's own stages run in, with params and data;
- `checks`: each compared item and the verdict (pure);
- `rebuild`: `reproduce` itself, which goes through the three in order;
- `report`: the terminal table;
- `compare`: two runs side by side (`reproml compare`).
Data versions are read, verified, from the DVC store (`reproml.stores.dvc`); git runs through
`reproml.stores.git`.
"""

from reproml.reproduce.checks import Check, Reproduction
from reproml.reproduce.compare import Row, RunView, compare_runs
from reproml.reproduce.rebuild import reproduce
from reproml.reproduce.record import Recorded, check_lineage, load_run
from reproml.reproduce.report import reproduction_table

__all__ = [
    "Check",
    "Recorded",
    "Reproduction",
    "Row",
    "RunView",
    "check_lineage",
    "compare_runs",
    "load_run",
    "reproduce",
    "reproduction_table",
]
