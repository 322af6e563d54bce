"""Prefect flows over the reproml library: schedules, retries and the monitor -> retrain hand-off."""
