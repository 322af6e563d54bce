"""What every flow module shares: Prefect's retry condition for transient failures, and the
library's command output routed into the current Prefect run's log."""

from __future__ import annotations

import logging
from typing import Any

from reproml.orchestration import commands
from reproml.redaction import install_scrubbing

# Every log record of a flow process (Prefect's run logs, stored on its server, included) and any
# uncaught traceback lose passwords and tokens; the flows all import this module.
install_scrubbing()


def run_logger() -> commands.Logger:
    """The current flow or task run's logger; outside a run, the library's own."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("reproml.flows")


commands.use_logger(run_logger)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry only what a moment's wait can fix."""
    try:
        state.result()
    except Exception as exc:
        return commands.is_transient(exc)
    return False
