"""Team mode's local stack: PostgreSQL, an MLflow tracking server, a Prefect server with a process
work pool and two workers, a Dask scheduler with two workers, and an S3 stand-in, on this machine.

An edge module: it starts the engines through their own CLIs (`python -m reproml.team up|down|status`,
`make team-up` / `team-down` / `team-status`) and writes `.reproml/team/env`, the variables that point
every reproml command at them. Nothing in the library imports it.
"""
