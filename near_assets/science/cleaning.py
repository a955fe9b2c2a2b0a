"""Cleaning raw mobile pings: normalise the contract's types, then drop every kind of dirt.

Units: ``lat``/``lon`` in WGS84 degrees, ``accuracy_m`` in metres, ``ts`` as
``datetime64[ns, UTC]``. Every function here is pure and vectorised (no loops over rows).

Each dirty row gets exactly one reason, the first that applies in :data:`REASONS` order:

==============  ==========================================================================
reason          the row ...
==============  ==========================================================================
null_field      has a missing ``device_id`` (or an empty one), ``ts``, ``lat`` or ``lon``
out_of_range    has ``|lat| > 90``, ``|lon| > 180``, an infinite coordinate, or a negative
                ``accuracy_m``
zero_zero       sits exactly at (0, 0): the "null island" default of broken SDKs
outside_day     has a ``ts`` outside the folder's UTC day ``[day 00:00, day+1 00:00)``
low_accuracy    has ``accuracy_m > max_accuracy_m`` (a missing accuracy is accepted)
duplicate       repeats an earlier ping of the same device (same ``ts``, ``lat``, ``lon``);
                the first one, in arrival order, is kept
high_density    sits on an exact coordinate reported by at least ``hdp_min_devices`` distinct
                devices that day (cell towers, IP-geolocation centroids), or in a cell of the
                learnt list ``hdps`` (``near_assets.science.hdp``, the ``high_density_points``
                table) when one is given
==============  ==========================================================================

Duplicates lose no information (one copy is kept), so :func:`bad_share` does not count them
as *bad*: only :data:`BAD_REASONS` (every other reason) are rows the platform had to give up.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time

import numpy as np
import pandas as pd
import pyarrow as pa

from near_assets.science.hdp import on_hdp

REQUIRED_COLUMNS: tuple[str, ...] = ("device_id", "ts", "lat", "lon")
OPTIONAL_COLUMNS: tuple[str, ...] = ("accuracy_m",)
PING_COLUMNS: tuple[str, ...] = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)

REASONS: tuple[str, ...] = (
    "null_field",
    "out_of_range",
    "zero_zero",
    "outside_day",
    "low_accuracy",
    "duplicate",
    "high_density",
)
BAD_REASONS: tuple[str, ...] = tuple(r for r in REASONS if r != "duplicate")

_NAT = np.iinfo(np.int64).min
_NUMERIC_KINDS = ("integer", "floating", "mixed-integer-float", "decimal")
_NS_PER_UNIT = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
# pandas' nanosecond range is about 1677-09-21 .. 2262-04-11; keep a margin inside it.
_MAX_ABS_NS = 9_200_000_000_000_000_000


def _ns_to_utc(ns: np.ndarray) -> pd.Series:
    return pd.Series(ns.astype("int64", copy=False).view("datetime64[ns]")).dt.tz_localize("UTC")


def _epoch_ms_to_ns(values: np.ndarray) -> np.ndarray:
    """Epoch milliseconds (int or float, NaN = missing) to int64 ns; unrepresentable -> NaT."""
    if values.dtype.kind in "iu":
        ms = values.astype("int64", copy=False)
        ok = np.abs(ms) <= _MAX_ABS_NS // 10**6
        return np.where(ok, np.where(ok, ms, 0) * 10**6, _NAT)
    ms = values.astype("float64", copy=False)
    with np.errstate(invalid="ignore", over="ignore"):
        ok = np.isfinite(ms) & (np.abs(ms) <= _MAX_ABS_NS // 10**6)
        whole = np.floor(np.where(ok, ms, 0.0))
        sub_ms = np.round((np.where(ok, ms, 0.0) - whole) * 1e6).astype("int64")
        return np.where(ok, whole.astype("int64") * 10**6 + sub_ms, _NAT)


def normalize_ts(ts: pd.Series) -> pd.Series:
    """Any contract timestamp as ``datetime64[ns, UTC]``.

    Accepts timestamps of any unit (tz-aware ones are converted, naive ones are taken as UTC),
    int64 epoch milliseconds (also nullable or as floats, as Parquet ints with nulls arrive) and
    ISO strings. Values that cannot be parsed or represented in nanoseconds become ``NaT``.
    """
    dtype = ts.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
        dtype = ts.dtype
    if pd.api.types.is_datetime64_dtype(dtype):
        raw = ts.to_numpy()
        unit = np.datetime_data(raw.dtype)[0]
        ints = raw.view("int64")
        factor = _NS_PER_UNIT.get(unit)
        if factor is None:
            raise ValueError(f"unsupported timestamp unit {unit!r}")
        ok = (ints != _NAT) & (np.abs(ints) <= _MAX_ABS_NS // factor)
        ns = np.where(ok, np.where(ok, ints, 0) * factor, _NAT)
    elif pd.api.types.is_bool_dtype(dtype):
        ns = np.full(len(ts), _NAT, dtype="int64")
    elif pd.api.types.is_integer_dtype(dtype) and pd.api.types.is_extension_array_dtype(dtype):
        missing = ts.isna().to_numpy()
        ns = np.where(missing, _NAT, _epoch_ms_to_ns(ts.to_numpy(dtype="int64", na_value=0)))
    elif pd.api.types.is_numeric_dtype(dtype):
        ns = _epoch_ms_to_ns(ts.to_numpy(dtype="float64", na_value=np.nan))
    elif pd.api.types.infer_dtype(ts, skipna=True) in _NUMERIC_KINDS:
        return normalize_ts(pd.to_numeric(ts, errors="coerce"))
    else:
        parsed = pd.to_datetime(ts, utc=True, errors="coerce", format="mixed")
        return normalize_ts(parsed).set_axis(ts.index)
    return _ns_to_utc(ns).set_axis(ts.index)


def _as_float(values: pd.Series) -> np.ndarray:
    if not pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype):
        values = pd.to_numeric(values, errors="coerce")
    return values.to_numpy(dtype="float64", na_value=np.nan)


def _as_device_id(values: pd.Series) -> pd.Series:
    """Device ids as Python strings in an object column (missing values stay missing)."""
    if pd.api.types.is_object_dtype(values.dtype) and pd.api.types.infer_dtype(values) in (
        "string",
        "empty",
    ):
        return values
    if isinstance(values.dtype, pd.CategoricalDtype):
        names = np.asarray(values.cat.categories.astype(str), dtype=object)
        codes = values.cat.codes.to_numpy()
        text = np.where(codes >= 0, names[np.maximum(codes, 0)], None)
        return pd.Series(text, index=values.index, dtype=object)
    if isinstance(values.dtype, pd.StringDtype):
        return pd.Series(values.to_numpy(dtype=object, na_value=None), index=values.index)
    text = values.astype(str).to_numpy(dtype=object)
    text[values.isna().to_numpy()] = None
    return pd.Series(text, index=values.index, dtype=object)


def normalize_pings(df: pd.DataFrame) -> pd.DataFrame:
    """The contract's ping columns with the platform's types (extra columns are dropped).

    Returns ``device_id`` (object column of ``str``; missing stays missing), ``ts``
    (``datetime64[ns, UTC]``), ``lat``, ``lon`` and ``accuracy_m`` (float64; a missing
    ``accuracy_m`` column becomes all-NaN). Raises ``ValueError`` naming any missing required
    column. Rows are neither dropped nor reordered.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"missing required column(s) {missing}; found {sorted(map(str, df.columns))}"
        )
    index = df.index
    accuracy = (
        _as_float(df["accuracy_m"])
        if "accuracy_m" in df.columns
        else np.full(len(df), np.nan, dtype="float64")
    )
    return pd.DataFrame(
        {
            "device_id": _as_device_id(df["device_id"]),
            "ts": normalize_ts(df["ts"]),
            "lat": pd.Series(_as_float(df["lat"]), index=index),
            "lon": pd.Series(_as_float(df["lon"]), index=index),
            "accuracy_m": pd.Series(accuracy, index=index),
        },
        index=index,
        copy=False,
    )


def empty_pings(with_reason: bool = False) -> pd.DataFrame:
    """A zero-row frame with the normalised ping schema (plus ``reason`` if asked)."""
    out = normalize_pings(pd.DataFrame({c: pd.Series([], dtype="float64") for c in PING_COLUMNS}))
    if with_reason:
        out["reason"] = pd.Series([], dtype=object)
    return out


def schema_problems(schema: pa.Schema) -> list[str]:
    """What is wrong with a raw pings file's Arrow schema, in words (empty when it is fine).

    Required columns must exist; ``ts`` must be a timestamp or an integer (epoch ms);
    ``lat``, ``lon`` and ``accuracy_m`` must be numeric; ``device_id`` a string or an integer.
    An all-null column (Arrow ``null`` type) is accepted: its rows are dirt, not a schema error.
    """
    problems = [f"missing required column '{c}'" for c in REQUIRED_COLUMNS if c not in schema.names]
    expected = {
        "device_id": (
            lambda t: (
                pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)
            ),
            "a string",
        ),
        "ts": (
            lambda t: pa.types.is_timestamp(t) or pa.types.is_integer(t),
            "a timestamp or int64 epoch milliseconds",
        ),
        "lat": (lambda t: pa.types.is_floating(t) or pa.types.is_integer(t), "float64 degrees"),
        "lon": (lambda t: pa.types.is_floating(t) or pa.types.is_integer(t), "float64 degrees"),
        "accuracy_m": (
            lambda t: pa.types.is_floating(t) or pa.types.is_integer(t),
            "a float (metres)",
        ),
    }
    for name, (ok, wanted) in expected.items():
        if name in schema.names:
            kind = schema.field(name).type
            if not (pa.types.is_null(kind) or ok(kind)):
                problems.append(f"column '{name}' has type {kind}, expected {wanted}")
    return problems


def day_bounds(day: date) -> tuple[pd.Timestamp, pd.Timestamp]:
    """``[start, end)`` of a UTC day as timestamps."""
    start = pd.Timestamp(datetime.combine(day, time(0), tzinfo=UTC))
    return start, start + pd.Timedelta(days=1)


def _frame(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """A normalised pings frame from arrays (``ts`` as int64 nanoseconds since the epoch)."""
    out = pd.DataFrame(columns, copy=False)
    out["ts"] = _ns_to_utc(columns["ts"])
    return out


def _device_codes(device_id: pd.Series) -> np.ndarray:
    """Integer codes whose order is the string order of the ids (-1 for a missing or empty id)."""
    codes, uniques = pd.factorize(device_id)
    names = np.asarray(uniques, dtype=object).astype(str)
    rank = np.empty(len(names), dtype="int64")
    rank[np.argsort(names, kind="stable")] = np.arange(len(names))
    rank[names == ""] = -1
    return np.where(codes >= 0, rank[np.maximum(codes, 0)], -1)


def _sort_order(device_codes: np.ndarray, ts_ns: np.ndarray) -> np.ndarray | None:
    """Row order by device, time, arrival (``None``: already in order).

    Two stable passes (time, then device) are about 3x faster than ``np.lexsort`` here.
    """
    same_device = device_codes[1:] == device_codes[:-1]
    if np.all((device_codes[1:] > device_codes[:-1]) | (same_device & (ts_ns[1:] >= ts_ns[:-1]))):
        return None
    by_time = np.argsort(ts_ns, kind="stable")
    shifted = device_codes[by_time] + 1
    narrow = shifted.astype("uint16") if shifted.max(initial=0) < 2**16 else shifted
    return by_time[np.argsort(narrow, kind="stable")]


def _repeats(device_codes: np.ndarray, ts_ns: np.ndarray, lat: np.ndarray, lon: np.ndarray):
    """Rows (in device, time order) repeating an earlier row's device, ts, lat and lon."""
    n = len(ts_ns)
    same = (device_codes[1:] == device_codes[:-1]) & (ts_ns[1:] == ts_ns[:-1])
    in_tie = np.zeros(n, dtype=bool)
    in_tie[1:] |= same
    in_tie[:-1] |= same
    ties = np.flatnonzero(in_tie)
    repeated = np.zeros(n, dtype=bool)
    if len(ties):
        keys = pd.DataFrame(
            {"d": device_codes[ties], "t": ts_ns[ties], "y": lat[ties], "x": lon[ties]}
        )
        repeated[ties[keys.duplicated(keep="first").to_numpy()]] = True
    return repeated


def _high_density(
    device_codes: np.ndarray, lat: np.ndarray, lon: np.ndarray, min_devices: int
) -> np.ndarray:
    """Rows on a coordinate that at least ``min_devices`` distinct devices reported.

    A latitude seen fewer than ``min_devices`` times cannot be such a coordinate, so only the
    (few) rows on frequent latitudes are grouped exactly.
    """
    dense = np.zeros(len(lat), dtype=bool)
    if len(lat) < min_devices:
        return dense
    sorted_lat = np.sort(lat)
    starts = np.flatnonzero(np.r_[True, sorted_lat[1:] != sorted_lat[:-1]])
    run_lengths = np.diff(np.r_[starts, len(sorted_lat)])
    frequent = sorted_lat[starts[run_lengths >= min_devices]]
    if len(frequent) == 0:
        return dense
    pos = np.minimum(np.searchsorted(frequent, lat), len(frequent) - 1)
    candidates = np.flatnonzero(frequent[pos] == lat)
    spots = pd.DataFrame(
        {"y": lat[candidates], "x": lon[candidates], "d": device_codes[candidates]}
    )
    devices = spots.groupby(["y", "x"], sort=False)["d"].transform("nunique").to_numpy()
    dense[candidates[devices >= min_devices]] = True
    return dense


def clean_pings(
    df: pd.DataFrame,
    day: date,
    *,
    max_accuracy_m: float = 1000.0,
    hdp_min_devices: int = 50,
    hdp_decimals: int | None = None,
    hdps: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split one UTC day of pings into ``(clean, quarantine)``.

    ``df`` holds the raw rows of the folder for ``day`` (any contract types; normalised here).
    Each dropped row goes to ``quarantine`` with the first applicable reason (see the module
    docstring); ``clean`` keeps every other row. ``max_accuracy_m`` is in metres;
    ``hdp_min_devices`` is the number of distinct devices on one exact coordinate that makes it
    a high-density point; ``hdp_decimals`` rounds coordinates before that count (``None``:
    exact equality). ``hdps`` is a learnt list of high-density cells (column ``cell``,
    ``near_assets.science.hdp``): rows inside a listed cell are ``high_density`` too (``None``
    or empty: the fixed rule alone). Both outputs are sorted by ``device_id``, ``ts`` (arrival order on ties)
    with a fresh index; ``quarantine`` has an extra ``reason`` column.
    """
    if hdp_min_devices < 1:
        raise ValueError("hdp_min_devices must be at least 1")
    pings = normalize_pings(df)
    n = len(pings)
    if n == 0:
        return empty_pings(), empty_pings(with_reason=True)

    device_codes = _device_codes(pings["device_id"])
    ts_ns = pings["ts"].to_numpy(dtype="datetime64[ns]").view("int64")
    order = _sort_order(device_codes, ts_ns)
    columns = {
        "device_id": pings["device_id"].to_numpy(dtype=object),
        "ts": ts_ns,
        "lat": pings["lat"].to_numpy(),
        "lon": pings["lon"].to_numpy(),
        "accuracy_m": pings["accuracy_m"].to_numpy(),
    }
    if order is not None:
        device_codes = device_codes[order]
        columns = {name: values[order] for name, values in columns.items()}
    ts_ns, lat, lon, accuracy = (columns[c] for c in ("ts", "lat", "lon", "accuracy_m"))

    reason = np.full(n, -1, dtype="int8")

    def assign(name: str, mask: np.ndarray) -> None:
        reason[(reason < 0) & mask] = REASONS.index(name)

    def among_alive(finder, *arrays: np.ndarray) -> np.ndarray:
        alive = np.flatnonzero(reason < 0)
        mask = np.zeros(n, dtype=bool)
        mask[alive[finder(*(a[alive] for a in arrays))]] = True
        return mask

    start, end = (t.value for t in day_bounds(day))
    with np.errstate(invalid="ignore"):
        assign("null_field", (device_codes < 0) | (ts_ns == _NAT) | np.isnan(lat) | np.isnan(lon))
        assign(
            "out_of_range",
            ~np.isfinite(lat)
            | ~np.isfinite(lon)
            | (np.abs(lat) > 90)
            | (np.abs(lon) > 180)
            | (accuracy < 0),
        )
        assign("zero_zero", (lat == 0) & (lon == 0))
        assign("outside_day", (ts_ns < start) | (ts_ns >= end))
        assign("low_accuracy", accuracy > max_accuracy_m)
    assign("duplicate", among_alive(_repeats, device_codes, ts_ns, lat, lon))
    y, x = (
        (lat, lon) if hdp_decimals is None else (lat.round(hdp_decimals), lon.round(hdp_decimals))
    )
    assign(
        "high_density",
        among_alive(lambda d, b, a: _high_density(d, b, a, hdp_min_devices), device_codes, y, x),
    )
    if hdps is not None and len(hdps):
        assign("high_density", on_listed_hdp(lat, lon, hdps))

    bad = reason >= 0
    clean = _frame({name: values[~bad] for name, values in columns.items()})
    quarantine = _frame({name: values[bad] for name, values in columns.items()})
    quarantine["reason"] = np.asarray(REASONS, dtype=object)[reason[bad]]
    return clean, quarantine


def on_listed_hdp(lat: np.ndarray, lon: np.ndarray, hdps: pd.DataFrame) -> np.ndarray:
    """True for each coordinate inside a cell of the learnt HDP list (``hdps``: column ``cell``,
    grid ``near_assets.science.hdp.HdpParams.cell_deg``)."""
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(lat) & np.isfinite(lon)
    out = np.zeros(len(lat), dtype=bool)
    out[finite] = on_hdp(lat[finite], lon[finite], hdps)
    return out


def reason_counts(quarantine: pd.DataFrame) -> dict[str, int]:
    """Rows per reason in a quarantine frame, every reason present (0 when none)."""
    found = quarantine["reason"].value_counts() if len(quarantine) else pd.Series(dtype="int64")
    return {r: int(found.get(r, 0)) for r in REASONS}


def bad_share(counts: Mapping[str, int], rows_in: int) -> float:
    """Share of input rows lost to a :data:`BAD_REASONS` reason (duplicates excluded); 0 if none."""
    if rows_in <= 0:
        return 0.0
    return sum(int(counts.get(r, 0)) for r in BAD_REASONS) / rows_in
