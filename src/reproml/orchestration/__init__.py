"""What the Prefect flows run, as plain functions: the retrain worktree, external commands, the
training and monitoring steps, the production replay and the deployment specs.

Nothing here imports Prefect: `flows/` at the project root wraps these functions in `@flow` /
`@task` (retries, concurrency, run logs), so the steps can be called, read and tested on their own
and `reproml`'s CLI imports Prefect only in the commands that run a flow.
"""
