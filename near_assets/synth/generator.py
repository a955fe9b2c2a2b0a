"""Write a synthetic lake: CONTRACTS inputs plus ground truth under ``truth/``.

Deterministic given the seed: every random draw comes from a generator keyed by
(seed, purpose, day, device block), so the output does not depend on progress bars or the
storage back end. Daily routines follow the clock of ``timezone`` (``LAKE_TIMEZONE``, or the
profile's own time zone); the local days that overlap a UTC day are scheduled and cut to it, so
folders stay UTC days. The realistic profiles (``real_*``, see ``panel.Profile``) add draws of
their own (keys 203, 610, 611) so the historical profiles' output is unchanged.
"""

from __future__ import annotations

import io
import itertools
import time
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from near_assets.science.cleaning import REASONS as CLEANING_PRECEDENCE
from near_assets.synth import campaigns as camp
from near_assets.synth import footprints as fps
from near_assets.synth import hdp as hdps
from near_assets.synth import people as ppl
from near_assets.synth.city import REGION_M, City, Frame, build_city
from near_assets.synth.dirt import (
    DEFAULT_DIRT_SHARE,
    HD_MIN_DEVICES,
    LEGIT_NULL_ACCURACY,
    REASONS,
    hd_points,
    plant_dirt,
    reason_shares,
)
from near_assets.synth.mobility import (
    DAY_S,
    KIND_NAMES,
    MIN_STAY_S,
    local_hour_weight,
    sample_pings,
    schedule_day,
    stitch_local_days,
)
from near_assets.synth.panel import (
    DECAY_M,
    PROFILES,
    VISITS_PER_DAY_P,
    Panel,
    Profile,
    apply_brand_lift,
    area_home_grid,
    build_panel,
    choice_probabilities,
    shadow_population,
    visit_probability,
)
from resources.lake import LakeResource
from resources.settings import lake_timezone

CHUNK_DEVICES = 4_000
ROWS_PER_FILE = 3_000_000
INT_MS_EVERY = 3  # days whose ordinal % INT_MS_EVERY == INT_MS_EVERY - 1 store ts as int64 ms

PINGS_SCHEMA_TS = pa.schema(
    [
        ("device_id", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("lat", pa.float64()),
        ("lon", pa.float64()),
        ("accuracy_m", pa.float64()),
    ]
)
PINGS_SCHEMA_MS = PINGS_SCHEMA_TS.set(1, pa.field("ts", pa.int64()))


@dataclass
class World:
    seed: int
    start: date
    days: int
    profile: Profile
    city: City
    panel: Panel
    observed: np.ndarray  # (devices, days) bool
    campaigns: list[camp.Campaign]
    towers: np.ndarray  # (k, 2) lat, lon
    area_q0: np.ndarray  # (areas, pois) P(a resident visits the POI on a day), baseline
    area_q1: dict[str, np.ndarray]  # the same with the brand's planted lift applied
    device_dict: pa.Array
    poi_ids: np.ndarray
    timezone: str = "UTC"
    shadow: Panel | None = None
    shadow_p: np.ndarray | None = None
    shadow_expected: float = 0.0
    away: np.ndarray | None = None  # (devices, days + 3): night starting on local start-2+j away
    hdp: hdps.HdpPlan | None = None  # planted high-density points (option ``hdp``)
    people: ppl.PeoplePlan | None = None  # people with 1-3 devices, households (``people``)
    footprints: fps.FootprintPlan | None = None  # true POI footprints (``footprints``)

    def dates(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range(self.days)]

    def away_nights(self, local: date) -> tuple[np.ndarray, np.ndarray] | None:
        """(away the night before ``local``, away the night after it), or None."""
        if self.away is None:
            return None
        j = (local - self.start).days + 2
        return self.away[:, j - 1], self.away[:, j]

    def outage(self, day_index: int) -> tuple[float, float] | None:
        """The UTC day's feed outage [start, end) in seconds from midnight, if any."""
        share = self.profile.outage_day_share
        if share <= 0:
            return None
        day = self.start + timedelta(days=day_index)
        rng = np.random.default_rng([self.seed, 610, day.toordinal()])
        hit, start = rng.random(), rng.uniform(0, DAY_S)
        end = min(start + rng.uniform(*self.profile.outage_hours) * 3600.0, DAY_S)
        return (start, end) if hit < share else None


DEFAULT_DEVICES = 10_000
"""The default panel: enough devices that ~130 POIs a day have >= 30 panel visitors, so audience
accuracy can be measured per POI (2,000 devices gave ~3); ~1.9 M pings a day."""


def default_start(days: int) -> str:
    """The first day of a sample that ends today (UTC)."""
    return (datetime.now(UTC).date() - timedelta(days=days - 1)).isoformat()


def _observation(seed: int, devices: int, days: int, profile: Profile) -> np.ndarray:
    rng = np.random.default_rng([seed, 606])
    if profile.observe == "contiguous":
        blocks = []
        for b0 in range(0, days, 7):
            width = min(7, days - b0)
            k = rng.integers(1, width + 1, devices)
            first = (rng.random(devices) * (width - k + 1)).astype(np.int64)
            col = np.arange(width)[None, :]
            blocks.append((col >= first[:, None]) & (col < (first + k)[:, None]))
        return np.concatenate(blocks, axis=1)
    if profile.observe == "daily":
        obs = rng.random((devices, days)) < profile.observe_p
        empty = ~obs.any(axis=1)
        obs[empty, rng.integers(0, days, empty.sum())] = True
        return obs
    blocks = []
    for b0 in range(0, days, 7):
        width = min(7, days - b0)
        k = rng.integers(1, width + 1, devices)
        rank = np.argsort(np.argsort(rng.random((devices, width)), axis=1), axis=1)
        blocks.append(rank < k[:, None])
    return np.concatenate(blocks, axis=1)


PANEL_SHARE_MAX = 0.05


def scale_population(city: City, devices: int) -> City:
    """A bigger city (every area's population times a whole factor) for panels above 5 %.

    Real panels are a few percent of the population; a Near-sized day (hundreds of thousands of
    devices) would otherwise hold most of the city. Panels up to 5 % keep the city unchanged, so
    smaller outputs are the same as before.
    """
    total = int(city.population.sum())
    factor = int(np.ceil(devices / (PANEL_SHARE_MAX * total)))
    if factor <= 1:
        return city
    population = city.population * factor
    areas = city.areas.assign(population=city.areas["population"] * factor)
    return replace(city, population=population, areas=areas)


def build_world(
    seed: int,
    devices: int,
    start: str,
    days: int,
    profile: str,
    campaigns: int,
    timezone: str = "UTC",
    audience: bool = True,
    hdp: bool = False,
    people: bool = False,
    footprints: bool = False,
) -> World:
    """Everything that does not change from day to day: city, panel, observation, campaigns.

    ``audience=False`` skips the shadow population that scales the whole population's POI
    visitors on non-UTC clocks (benches that score mobility only).
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {sorted(PROFILES)}")
    if days < 1 or devices < 1:
        raise ValueError("days and devices must be positive")
    ZoneInfo(timezone)
    prof = PROFILES[profile]
    city = build_city(seed, frame=Frame(prof.center_lat, prof.center_lon))
    city = scale_population(city, devices)
    panel = build_panel(seed, city, devices, prof)
    plan = None
    if people:
        panel, plan = ppl.apply_people(seed, panel, CHUNK_DEVICES)
    fp_plan = None
    if footprints:  # after the panel: homes and work stay out of the original POI cells
        city, fp_plan = fps.plan_footprints(seed, city)
    first = date.fromisoformat(start)
    brands = sorted({b for b in city.poi_brand if b is not None})
    plans = camp.plan_campaigns(seed, first, days, brands, devices, campaigns)
    gxy, _ = area_home_grid(city)
    p0 = choice_probabilities(gxy, city)

    def by_area(q: np.ndarray) -> np.ndarray:
        return q.reshape(city.n_areas, -1, q.shape[1]).mean(axis=1)

    q0 = by_area(visit_probability(p0))
    q1 = {}
    for c in plans:
        if c.planted_lift and c.brand not in q1:
            p1 = p0.copy()
            apply_brand_lift(p1, np.ones(len(p1), bool), city.poi_brand == c.brand, c.planted_lift)
            q1[c.brand] = by_area(visit_probability(p1))
    tlat, tlon = city.frame.to_latlon(*hd_points(seed, REGION_M).T)
    shadow = shadow_p = None
    shadow_expected = 0.0
    away = None
    if panel.sleeps_away is not None and prof.away_night_p > 0:
        draw = np.random.default_rng([seed, 611]).random((devices, days + 3))
        away = panel.sleeps_away[:, None] & (draw < prof.away_night_p)
    split = any(len(_local_windows(first + timedelta(days=i), timezone)) > 1 for i in range(days))
    if audience and split:
        shadow = shadow_population(seed, city, prof, int(np.clip(8 * devices, 2_000, 16_000)))
        shadow_p = choice_probabilities(shadow.home_xy, city)
        shadow_expected = float(visit_probability(shadow_p).sum())
    return World(
        seed=seed,
        start=first,
        days=days,
        profile=prof,
        city=city,
        panel=panel,
        observed=_observation(seed, devices, days, prof),
        campaigns=plans,
        towers=np.column_stack([tlat, tlon]),
        area_q0=q0,
        area_q1=q1,
        device_dict=pa.array(panel.device_ids.astype(str), pa.string()),
        poi_ids=city.pois["poi_id"].to_numpy(),
        timezone=timezone,
        shadow=shadow,
        shadow_p=shadow_p,
        shadow_expected=shadow_expected,
        away=away,
        hdp=hdps.plan_hdps(seed, city, devices) if hdp else None,
        people=plan,
        footprints=fp_plan,
    )


@dataclass
class DayResult:
    pings: dict[str, np.ndarray]
    dirt: dict[str, int]
    stays: pd.DataFrame
    visitors: pd.DataFrame
    hdp_rows: pd.DataFrame | None = None


def _local_windows(day: date, timezone: str) -> list[tuple[date, float, float]]:
    """Local days overlapping the UTC ``day``, each with its UTC window in seconds from 00:00."""
    tz = ZoneInfo(timezone)
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)

    def local_start(d: date) -> float:
        local = datetime(d.year, d.month, d.day, tzinfo=tz)
        return (local.astimezone(UTC) - midnight).total_seconds()

    out = []
    for k in (-1, 0, 1):
        d = day + timedelta(days=k)
        lo, hi = local_start(d), local_start(d + timedelta(days=1))
        if lo < DAY_S and hi > 0:
            out.append((d, lo, hi))
    return out


def _window_factor(world: World, local_days: list[tuple[date, float, float]]) -> float:
    """Distinct (person, POI) visits in this UTC day relative to one local day's expectation.

    1 when routines follow UTC. Otherwise a UTC day holds the evening of one local day and
    most of the next (e.g. Friday-evening outings land in Saturday's UTC day), measured on a
    shadow population that follows the same local-day schedules as the panel.
    """
    if len(local_days) == 1 or world.shadow is None or world.shadow_p is None:
        return 1.0
    sh = world.shadow
    pieces = [
        (
            schedule_day(
                np.random.default_rng([world.seed, 909, local.toordinal()]),
                home_xy=sh.home_xy,
                work_xy=sh.work_xy,
                night=sh.night_shift,
                speed=sh.speed_mps,
                choice_p=world.shadow_p,
                poi_xy=world.city.poi_xy,
                workday=local.weekday() < 5,
                prev_workday=(local - timedelta(days=1)).weekday() < 5,
            ),
            lo,
            hi,
        )
        for local, lo, hi in local_days
    ]
    st = stitch_local_days(pieces)
    real = (st.end - st.start >= MIN_STAY_S) & (st.poi >= 0)
    n_poi = world.shadow_p.shape[1]
    pairs = np.unique(st.dev[real].astype(np.int64) * n_poi + st.poi[real]).size
    return pairs / max(world.shadow_expected, 1e-9)


def simulate_day(world: World, day_index: int, dirt_share: float) -> DayResult:
    """Simulate one UTC day for the whole panel (in device blocks) and plant dirt."""
    day = world.start + timedelta(days=day_index)
    city, panel = world.city, world.panel
    observed = world.observed[:, day_index]
    active = [c for c in world.campaigns if c.active(day)]
    local_days = _local_windows(day, world.timezone)
    brand_masks = {c.brand: city.poi_brand == c.brand for c in world.campaigns}
    rate, sampling = panel.ping_rate, {}
    if world.profile.local_sampling:
        noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
        offset = ZoneInfo(world.timezone).utcoffset(noon)
        weight = local_hour_weight(
            world.profile.night_damping, offset.total_seconds() if offset else 0.0
        )
        rate, sampling = panel.day_rate_h() * weight.sum(), {"hour_weight": weight}
    parts_p, parts_s = [], []
    for b0 in range(0, panel.n, CHUNK_DEVICES):
        sl = slice(b0, min(b0 + CHUNK_DEVICES, panel.n))
        p0 = choice_probabilities(panel.home_xy[sl], city)
        pieces = []
        for local, lo, hi in local_days:
            p = p0.copy()
            for c in world.campaigns:
                if c.active(local):
                    apply_brand_lift(p, c.exposed[sl], brand_masks[c.brand], c.planted_lift)
            away = world.away_nights(local)
            away_kw = (
                {}
                if away is None or panel.away_xy is None
                else {
                    "away_xy": panel.away_xy[sl],
                    "away_morning": away[0][sl],
                    "away_evening": away[1][sl],
                }
            )
            pieces.append(
                (
                    schedule_day(
                        np.random.default_rng([world.seed, 505, local.toordinal(), b0]),
                        home_xy=panel.home_xy[sl],
                        work_xy=panel.work_xy[sl],
                        night=panel.night_shift[sl],
                        speed=panel.speed_mps[sl],
                        choice_p=p,
                        poi_xy=city.poi_xy,
                        workday=local.weekday() < 5,
                        prev_workday=(local - timedelta(days=1)).weekday() < 5,
                        **away_kw,
                    ),
                    lo,
                    hi,
                )
            )
        stays = stitch_local_days(pieces)
        if world.footprints is not None:
            fps.spread_stays(
                np.random.default_rng([world.seed, 631, day.toordinal(), b0]),
                stays.poi,
                stays.x,
                stays.y,
                world.footprints,
            )
        if world.people is not None:
            stays = ppl.share_stays(stays, world.people.primary[sl] - b0)
        pings = sample_pings(
            np.random.default_rng([world.seed, 506, day.toordinal(), b0]),
            stays,
            observed=observed[sl],
            rate=rate[sl],
            poi_half=city.poi_half if world.footprints is None else city.poi_half * fps.PING_WANDER,
            profile=world.profile,
            **sampling,
        )
        stays.dev = stays.dev + b0
        pings.dev = pings.dev + b0
        parts_s.append(stays)
        parts_p.append(pings)

    s_dev = np.concatenate([s.dev for s in parts_s])
    s_start = np.concatenate([s.start for s in parts_s])
    s_end = np.concatenate([s.end for s in parts_s])
    s_x = np.concatenate([s.x for s in parts_s])
    s_y = np.concatenate([s.y for s in parts_s])
    s_kind = np.concatenate([s.kind for s in parts_s])
    s_poi = np.concatenate([s.poi for s in parts_s])
    real = s_end - s_start >= MIN_STAY_S

    visitors = _visitors(
        world,
        day,
        observed,
        s_dev[real & (s_poi >= 0)],
        s_poi[real & (s_poi >= 0)],
        active,
        _window_factor(world, local_days),
    )

    keep = real & observed[s_dev]
    day_start = pd.Timestamp(day, tz="UTC")
    lat, lon = city.frame.to_latlon(s_x[keep], s_y[keep])
    stays_df = pd.DataFrame(
        {
            "device_id": panel.device_ids[s_dev[keep]].astype(str),
            "start_ts": day_start + pd.to_timedelta(np.round(s_start[keep] * 1e6), unit="us"),
            "end_ts": day_start + pd.to_timedelta(np.round(s_end[keep] * 1e6), unit="us"),
            "lat": lat,
            "lon": lon,
            "kind": KIND_NAMES[s_kind[keep]].astype(str),
            "poi_id": pd.array(
                np.where(s_poi[keep] >= 0, world.poi_ids[np.maximum(s_poi[keep], 0)], None),
                dtype="string",
            ),
        }
    )

    p_lat, p_lon = city.frame.to_latlon(
        np.concatenate([p.x for p in parts_p]), np.concatenate([p.y for p in parts_p])
    )
    day_start_ms = int(day_start.value // 1_000_000)
    cols = {
        "dev": np.concatenate([p.dev for p in parts_p]),
        "t_ms": np.concatenate([p.t_ms for p in parts_p]) + day_start_ms,
        "lat": p_lat,
        "lon": p_lon,
        "accuracy": np.concatenate([p.accuracy for p in parts_p]),
    }
    outage = world.outage(day_index)
    if outage is not None:
        t = cols["t_ms"] - day_start_ms
        up = (t < outage[0] * 1000.0) | (t >= outage[1] * 1000.0)
        cols = {k: v[up] for k, v in cols.items()}
    if world.hdp is not None:
        hdps.round_coordinates(cols, world.hdp.decimals)
        hdps.plant_hdps(world.seed, day.toordinal(), cols, world.hdp)
    rng = np.random.default_rng([world.seed, 707, day.toordinal()])
    cols, dirt = plant_dirt(
        rng, cols, share=dirt_share, day_start_ms=day_start_ms, towers_latlon=world.towers
    )
    hdp_rows = (
        hdps.planted_rows(cols, panel.device_ids, world.hdp) if world.hdp is not None else None
    )
    return DayResult(pings=cols, dirt=dirt, stays=stays_df, visitors=visitors, hdp_rows=hdp_rows)


def _visitors(
    world: World,
    day: date,
    observed: np.ndarray,
    v_dev: np.ndarray,
    v_poi: np.ndarray,
    active: list[camp.Campaign],
    window_factor: float = 1.0,
) -> pd.DataFrame:
    """Distinct panel visitors per POI and the whole population's visitors (panel included)."""
    n_poi = len(world.poi_ids)
    pairs = np.unique(v_dev.astype(np.int64) * n_poi + v_poi)
    p_dev, p_poi = pairs // n_poi, pairs % n_poi
    panel_all = np.bincount(p_poi, minlength=n_poi)
    panel_obs = np.bincount(p_poi[observed[p_dev]], minlength=n_poi)

    q_area = world.area_q0.copy()
    for c in active:
        if c.brand in world.area_q1:
            f = c.exposed.mean()
            q_area *= (1.0 - f) + f * world.area_q1[c.brand] / np.maximum(world.area_q0, 1e-300)
        brand_pois = world.city.poi_brand == c.brand
        brand_visitors = np.zeros(world.panel.n, dtype=bool)
        brand_visitors[p_dev[brand_pois[p_poi]]] = True
        c.record_day(observed, brand_visitors)
    others = world.city.population - world.panel.area_devices
    rng = np.random.default_rng([world.seed, 808, day.toordinal()])
    non_panel = rng.binomial(others[:, None], np.clip(q_area * window_factor, 0, 1)).sum(axis=0)
    return pd.DataFrame(
        {
            "poi_id": world.poi_ids.astype(str),
            "panel_visitors": panel_obs.astype(np.int64),
            "true_people": (panel_all + non_panel).astype(np.int64),
        }
    )


def pings_tables(world: World, day: date, cols: dict[str, np.ndarray]) -> list[pa.Table]:
    """The day's pings as Arrow tables (CONTRACTS schema), split into files by device block."""
    n = len(cols["dev"])
    n_files = max(2, -(-n // ROWS_PER_FILE)) if n else 1
    as_ms = day.toordinal() % INT_MS_EVERY == INT_MS_EVERY - 1
    bounds = np.linspace(0, n, n_files + 1).astype(np.int64)
    dev = cols["dev"]
    for i in range(1, n_files):
        b = bounds[i]
        while 0 < b < n and dev[b] == dev[b - 1]:
            b += 1
        bounds[i] = max(b, bounds[i - 1])
    tables = []
    for lo, hi in itertools.pairwise(bounds):
        sl = slice(lo, hi)
        order = np.argsort(cols["t_ms"][sl], kind="stable")
        pick = {k: v[sl][order] for k, v in cols.items()}
        ids = pa.DictionaryArray.from_arrays(
            pa.array(pick["dev"].astype(np.int32), mask=pick["null_device_id"]), world.device_dict
        ).cast(pa.string())
        if as_ms:
            ts = pa.array(pick["t_ms"], pa.int64(), mask=pick["null_ts"])
        else:
            ts = pa.array(pick["t_ms"] * 1000, pa.int64(), mask=pick["null_ts"]).cast(
                pa.timestamp("us", tz="UTC")
            )
        acc = pick["accuracy"]
        tables.append(
            pa.Table.from_arrays(
                [
                    ids,
                    ts,
                    pa.array(pick["lat"], pa.float64(), mask=pick["null_lat"]),
                    pa.array(pick["lon"], pa.float64(), mask=pick["null_lon"]),
                    pa.array(acc, pa.float64(), mask=np.isnan(acc)),
                ],
                schema=PINGS_SCHEMA_MS if as_ms else PINGS_SCHEMA_TS,
            )
        )
    return tables


def _write_table(lake: LakeResource, table: pa.Table, key: str) -> None:
    buf = io.BytesIO()
    strings = [f.name for f in table.schema if pa.types.is_string(f.type)]
    pq.write_table(table, buf, compression="zstd", use_dictionary=strings)
    lake.write_bytes(key, buf.getvalue())


def write_day(world: World, lake: LakeResource, day_index: int, result: DayResult) -> int:
    """Replace the day's raw pings folder and truth files; returns the rows written."""
    day = world.start + timedelta(days=day_index)
    d = day.isoformat()
    folder = f"raw/pings/date={d}"
    lake.delete(folder)
    tables = pings_tables(world, day, result.pings)
    for i, table in enumerate(tables):
        _write_table(lake, table, f"{folder}/part-{i}.parquet")
    stays = pa.Table.from_pandas(result.stays, preserve_index=False).cast(
        pa.schema(
            [
                ("device_id", pa.string()),
                ("start_ts", pa.timestamp("us", tz="UTC")),
                ("end_ts", pa.timestamp("us", tz="UTC")),
                ("lat", pa.float64()),
                ("lon", pa.float64()),
                ("kind", pa.string()),
                ("poi_id", pa.string()),
            ]
        )
    )
    _write_table(lake, stays, f"truth/stays/date={d}/part-0.parquet")
    _write_table(
        lake,
        pa.Table.from_pandas(result.visitors, preserve_index=False),
        f"truth/poi_visitors/date={d}/part-0.parquet",
    )
    lake.write_json(f"truth/dirt/date={d}.json", result.dirt)
    if result.hdp_rows is not None:
        lake.write_parquet(result.hdp_rows, f"truth/hdp_pings/date={d}")
    return int(sum(t.num_rows for t in tables))


def write_reference(world: World, lake: LakeResource) -> None:
    lake.write_parquet(world.city.areas, "reference/areas")
    lake.write_parquet(world.city.pois, "reference/pois")


def profile_timezone(profile: str, timezone: str | None = None) -> str:
    """The routines' clock: ``timezone`` if given, else the profile's, else ``LAKE_TIMEZONE``."""
    prof = PROFILES.get(profile)
    return timezone or (prof.timezone if prof else None) or lake_timezone()


def truth_strata(world: World) -> dict[str, np.ndarray]:
    """Per-device columns of ``truth/homes`` that benches stratify by.

    ``ping_rate_h``: stationary day-time pings an hour; ``sleeps_away``: the device sleeps at a
    second place on some nights; ``away_nights``: nights starting on an observed day of the
    window (local date) that it spent there; ``first_observed`` / ``last_observed``: UTC days.
    """
    panel, obs = world.panel, world.observed
    away = np.zeros(panel.n, dtype=np.int64)
    if world.away is not None:
        away = (world.away[:, 2 : 2 + world.days] & obs).sum(axis=1).astype(np.int64)
    dates = np.array([d.isoformat() for d in world.dates()], dtype=object)
    seen = obs.any(axis=1)
    first = np.where(seen, dates[np.argmax(obs, axis=1)], None)
    last = np.where(seen, dates[world.days - 1 - np.argmax(obs[:, ::-1], axis=1)], None)
    sleeps = panel.sleeps_away if panel.sleeps_away is not None else np.zeros(panel.n, bool)
    return {
        "ping_rate_h": panel.day_rate_h().astype(np.float64),
        "sleeps_away": sleeps.astype(bool),
        "away_nights": away,
        "first_observed": first.astype(object),
        "last_observed": last.astype(object),
    }


def truth_homes(world: World) -> pd.DataFrame:
    """``truth/homes``: each device's home and work, night shift, observation and strata."""
    panel = world.panel
    hlat, hlon = world.city.frame.to_latlon(panel.home_xy[:, 0], panel.home_xy[:, 1])
    wlat, wlon = world.city.frame.to_latlon(panel.work_xy[:, 0], panel.work_xy[:, 1])
    return pd.DataFrame(
        {
            "device_id": panel.device_ids.astype(str),
            "home_lat": hlat,
            "home_lon": hlon,
            "home_area_id": world.city.areas["area_id"].to_numpy()[panel.home_area],
            "work_lat": wlat,
            "work_lon": wlon,
            "night_shift": panel.night_shift.astype(bool),
            "observed_days": world.observed.sum(axis=1).astype(np.int64),
            **truth_strata(world),
        }
    )


def write_truth(world: World, lake: LakeResource, params: dict[str, Any]) -> None:
    panel = world.panel
    lake.write_parquet(truth_homes(world), "truth/homes")
    for key in lake.list("reference/campaigns") + lake.list("truth/campaigns"):
        lake.store.delete_object(key)
    for key in lake.list("raw/exposures"):
        lake.store.delete_object(key)
    for c in world.campaigns:
        lake.write_json(f"reference/campaigns/{c.campaign_id}.json", c.reference())
        lake.write_json(f"truth/campaigns/{c.campaign_id}.json", c.truth())
        lake.write_parquet(
            camp.exposures(world.seed, c, panel.device_ids),
            f"raw/exposures/campaign_id={c.campaign_id}",
        )
    lake.write_json("truth/panel.json", params)
    if world.hdp is not None:
        lake.write_parquet(world.hdp.table, "truth/hdp")
    if world.people is not None:
        lake.write_parquet(world.people.table, "truth/identity")
    if world.footprints is not None:
        lake.write_parquet(world.footprints.table, "truth/poi_footprints")


def _params(world: World, devices: int, dirt_share: float, summary: dict[str, Any]) -> dict:
    return {
        "seed": world.seed,
        "devices": devices,
        "profile": world.profile.__dict__,
        "start": world.start.isoformat(),
        "days": world.days,
        "region_bbox": world.city.frame.bbox(),
        "timezone": world.timezone,
        "schedule_clock": (
            f"local time in {world.timezone}: nights at home, work about 08-17 h, night-shift "
            "workers at work about 22-06 h and asleep by day; raw and truth days are UTC days"
        ),
        "areas": len(world.city.areas),
        "pois": len(world.city.pois),
        "panel_per_area": dict(
            zip(world.city.areas["area_id"], world.panel.area_devices.tolist(), strict=True)
        ),
        "choice_model": {
            "visits_per_day_p": VISITS_PER_DAY_P.tolist(),
            "distance_decay_m": DECAY_M,
            "weight": "attractiveness * exp(-distance_from_home / decay)",
        },
        "observation": (
            "truth/stays and panel_visitors cover devices observed that day; true_people "
            "counts every person (all panel devices plus binomial draws for the rest of each "
            "area's population, per (home area, POI), with the panel's choice model; with a "
            "non-UTC clock scaled by the share of a local day's visits that fall in the UTC day, "
            "measured on a shadow population)"
        ),
        "dirt_share": dirt_share,
        "dirt_reason_shares": reason_shares(dirt_share) if dirt_share else {},
        "dirt_precedence": list(CLEANING_PRECEDENCE),
        "legit_null_accuracy_share": LEGIT_NULL_ACCURACY,
        "high_density_points": [[float(a), float(b)] for a, b in world.towers],
        "high_density_min_devices": HD_MIN_DEVICES,
        "ts_int64_ms_days": "days whose date.toordinal() % 3 == 2 (all files of the day)",
        "campaign_knobs": {
            "min_days": camp.MIN_DAYS,
            "max_days": camp.MAX_DAYS,
            "exposed_share": list(camp.EXPOSED_SHARE),
            "lifted_share": camp.LIFTED_SHARE,
            "planted_lift": camp.PLANTED_LIFT,
            "exposures_mean": camp.EXPOSURES_MEAN,
        },
        "campaigns": [c.campaign_id for c in world.campaigns],
        "outages_utc_h": {
            d.isoformat(): [round(o[0] / 3600, 3), round(o[1] / 3600, 3)]
            for i, d in enumerate(world.dates())
            if (o := world.outage(i)) is not None
        },
        "pings_written": summary["pings"],
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def generate(
    lake: LakeResource,
    *,
    seed: int = 7,
    devices: int = DEFAULT_DEVICES,
    start: str | None = None,
    days: int = 7,
    profile: str = "default",
    campaigns: int = 4,
    dirt: bool = True,
    dirt_share: float | None = None,
    timezone: str | None = None,
    progress: bool = True,
    hdp: bool = False,
    people: bool = False,
    footprints: bool = False,
) -> dict[str, Any]:
    """Generate ``days`` days of pings for ``devices`` panel devices, references and truth.

    ``dirt_share`` (share of dirty rows per day) defaults to 6.8 % when ``dirt`` is on.
    Daily routines follow the clock of ``timezone`` (default ``LAKE_TIMEZONE``, else UTC);
    files and truth are still cut by UTC day. ``hdp`` plants high-density points of several
    kinds and rounds genuine coordinates per device SDK (``near_assets.synth.hdp``); off, the
    output is the same as without the option. ``people`` groups devices into people of 1-3
    devices and households sharing a home (``near_assets.synth.people``, truth under
    ``truth/identity``); off, the output is unchanged. ``footprints`` gives the POIs true
    footprints that differ from the delivered polygons (offsets, oversized and undersized boxes,
    neighbours sharing a building) and keeps the visitors' pings inside the true footprints
    (``near_assets.synth.footprints``, truth under ``truth/poi_footprints``); off, unchanged.
    Returns a summary: pings written, rows per day, seconds, campaigns.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    start = start or default_start(days)
    share = (DEFAULT_DIRT_SHARE if dirt_share is None else dirt_share) if dirt else 0.0
    world = build_world(
        seed,
        devices,
        start,
        days,
        profile,
        campaigns,
        profile_timezone(profile, timezone),
        hdp=hdp,
        people=people,
        footprints=footprints,
    )
    write_reference(world, lake)
    per_day: dict[str, int] = {}
    bar = tqdm(total=days, unit="day", desc="near-synth", disable=not progress)
    for i, day in enumerate(world.dates()):
        result = simulate_day(world, i, share)
        per_day[day.isoformat()] = write_day(world, lake, i, result)
        bar.set_postfix(day=day.isoformat(), pings=per_day[day.isoformat()])
        bar.update(1)
    bar.close()
    summary: dict[str, Any] = {
        "pings": int(sum(per_day.values())),
        "per_day": per_day,
        "devices": devices,
        "days": days,
        "start": world.start.isoformat(),
        "profile": profile,
        "campaigns": [c.campaign_id for c in world.campaigns],
        "lake": lake.uri(""),
    }
    write_truth(world, lake, _params(world, devices, share, summary))
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary


def dirty_day(
    lake: LakeResource,
    day: str,
    *,
    share: float = 0.30,
    seed: int = 7,
    devices: int = 200,
    profile: str = "default",
    timezone: str | None = None,
) -> dict[str, int]:
    """Write one day of pings with ``share`` dirty rows (plus its truth files); returns the counts.

    Only ``raw/pings/date=<day>/`` and the day's ``truth/`` files are replaced, so this can
    turn one day of an existing sample lake into a malformed one.
    """
    world = build_world(seed, devices, day, 1, profile, 0, profile_timezone(profile, timezone))
    result = simulate_day(world, 0, share)
    write_day(world, lake, 0, result)
    return result.dirt


__all__ = [
    "REASONS",
    "World",
    "build_world",
    "dirty_day",
    "generate",
    "profile_timezone",
    "simulate_day",
    "truth_homes",
    "truth_strata",
]
