"""The device panel (a random sample of each area's population) and the POI choice model.

Panel devices and the rest of the population share one behavioural model: every person makes
K visits a day (K ~ ``VISITS_PER_DAY_P``), each to POI j with probability proportional to
attractiveness_j * exp(-distance(home, j) / ``DECAY_M``). The whole population's daily
visitors can therefore be simulated per (home area, POI) with binomial draws
(:func:`area_visit_probability`), consistent with the panel's individual trajectories.

Profiles (:data:`PROFILES`): ``default`` (dense, every device most days) and ``sparse`` are the
historical fixed profiles; their output is frozen (same seed, same bytes). The ``real_*``
profiles are a grid over the knobs real panels differ in (see :class:`Profile`): a per-device
stationary ping rate from a wide log-normal, night damping of sampling, churn (a contiguous run
of observed days), feed outages, night-shift share, devices that sleep elsewhere on some nights,
and the city's latitude and time zone. ``real_holdout`` is never used to fit anything (the home
confidence calibration is fitted on the other ``real_*`` profiles and checked on it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from near_assets.synth.city import CENTER_LAT, CENTER_LON, City

VISITS_PER_DAY_P = np.array([0.35, 0.35, 0.20, 0.10])
DECAY_M = 2_000.0
COVERAGE_RANGE = (0.5, 3.0)


@dataclass(frozen=True)
class Profile:
    """Sampling and behaviour knobs of a panel profile.

    The fields after ``observe_p`` default to the historical behaviour (the ``default`` and
    ``sparse`` profiles): set them to get a realistic panel.

    - ``observe``: ``"daily"`` (each day with probability ``observe_p``), ``"weekly"`` (1-7
      random days per week) or ``"contiguous"`` (per 7-day block one contiguous run of 1-7 days,
      length uniform: panel churn).
    - ``rate_median_h`` / ``rate_sigma`` / ``rate_min_h`` / ``rate_max_h``: when
      ``rate_median_h`` is set, each device's stationary day-time ping rate (pings an hour) is
      log-normal with that median and log-sd, clipped to [min, max]; ``pings_per_day`` is then
      unused. Sampling follows the local clock, ``night_damping`` times sparser at night
      (local 23-06 h, half-way at 22 h and 06 h: phones sleep).
    - ``outage_day_share`` / ``outage_hours``: share of UTC days with one feed outage (no pings
      from any device) lasting ``outage_hours`` (uniform range).
    - ``away_share`` / ``away_night_p``: share of day-shift devices that sleep at a second
      place (partner, family) on ``away_night_p`` of their nights.
    - ``center_lat`` / ``center_lon`` / ``timezone``: where the city is and the clock its
      routines follow (``None``: ``$LAKE_TIMEZONE``); feeds and truth stay in UTC days.
    """

    name: str
    pings_per_day: float
    burst_share: float
    burst_mean: float
    burst_gap_s: float
    random_gaps_per_day: float
    travel_gap_prob: float
    night_shift_share: float
    observe: str
    observe_p: float = 0.97
    rate_median_h: float | None = None
    rate_sigma: float = 0.9
    rate_min_h: float = 0.2
    rate_max_h: float = 60.0
    night_damping: float = 1.0
    outage_day_share: float = 0.0
    outage_hours: tuple[float, float] = (2.0, 6.0)
    away_share: float = 0.0
    away_night_p: float = 0.0
    center_lat: float = CENTER_LAT
    center_lon: float = CENTER_LON
    timezone: str | None = None

    @property
    def local_sampling(self) -> bool:
        """Per-device hourly rates on the local clock (the realistic profiles)."""
        return self.rate_median_h is not None


def _real(name: str, **knobs: object) -> Profile:
    """A realistic profile: the base knobs below, overridden by ``knobs``."""
    base: dict[str, object] = {
        "pings_per_day": 0.0,
        "burst_share": 0.25,
        "burst_mean": 2.5,
        "burst_gap_s": 30.0,
        "random_gaps_per_day": 1.0,
        "travel_gap_prob": 0.5,
        "night_shift_share": 0.06,
        "observe": "contiguous",
        "rate_median_h": 2.0,
        "rate_sigma": 0.9,
        "night_damping": 0.3,
        "outage_day_share": 0.25,
        "away_share": 0.10,
        "away_night_p": 1 / 3,
    }
    return Profile(name=name, **{**base, **knobs})  # type: ignore[arg-type]


PROFILES = {
    "default": Profile(
        name="default",
        pings_per_day=208.0,
        burst_share=0.7,
        burst_mean=8.0,
        burst_gap_s=15.0,
        random_gaps_per_day=1.0,
        travel_gap_prob=0.35,
        night_shift_share=0.10,
        observe="daily",
    ),
    "sparse": Profile(
        name="sparse",
        pings_per_day=56.0,
        burst_share=0.2,
        burst_mean=2.0,
        burst_gap_s=30.0,
        random_gaps_per_day=1.5,
        travel_gap_prob=0.5,
        night_shift_share=0.25,
        observe="weekly",
    ),
    # A European city, feed and nights both UTC.
    "real_eu": _real("real_eu", center_lat=51.51, center_lon=-0.13, timezone="UTC"),
    # A US west-coast city: feed in UTC, routines (and nights) on Los Angeles time.
    "real_uswest": _real(
        "real_uswest", center_lat=34.05, center_lon=-118.24, timezone="America/Los_Angeles"
    ),
    # Sparser: median one ping an hour, nights four times sparser, more night workers.
    "real_sparse": _real(
        "real_sparse",
        center_lat=40.42,
        center_lon=-3.70,
        timezone="Europe/Madrid",
        rate_median_h=1.0,
        rate_sigma=1.0,
        night_damping=0.25,
        night_shift_share=0.08,
    ),
    # Denser: median four pings an hour, fewer outages, fewer night workers.
    "real_dense": _real(
        "real_dense",
        center_lat=41.88,
        center_lon=-87.63,
        timezone="America/Chicago",
        rate_median_h=4.0,
        rate_sigma=0.8,
        night_damping=0.4,
        night_shift_share=0.05,
        outage_day_share=0.15,
    ),
    # Far east: more devices that often sleep elsewhere.
    "real_tokyo": _real(
        "real_tokyo",
        center_lat=35.68,
        center_lon=139.69,
        timezone="Asia/Tokyo",
        night_shift_share=0.07,
        away_share=0.15,
        away_night_p=0.4,
    ),
    # Held back from every fit: southern hemisphere, its own mix of every knob.
    "real_holdout": _real(
        "real_holdout",
        center_lat=-33.87,
        center_lon=151.21,
        timezone="Australia/Sydney",
        burst_share=0.35,
        burst_mean=3.0,
        rate_median_h=1.5,
        rate_sigma=1.0,
        night_damping=0.25,
        night_shift_share=0.07,
        outage_day_share=0.30,
        away_share=0.12,
    ),
}
REAL_PROFILES = tuple(name for name in PROFILES if name.startswith("real_"))
HOLDOUT_PROFILE = "real_holdout"
FIT_PROFILES = tuple(name for name in REAL_PROFILES if name != HOLDOUT_PROFILE)


@dataclass
class Panel:
    """Per-device arrays (index i is device ``d{i:06d}``)."""

    device_ids: np.ndarray
    home_xy: np.ndarray
    home_area: np.ndarray
    work_xy: np.ndarray
    night_shift: np.ndarray
    speed_mps: np.ndarray
    ping_rate: np.ndarray
    area_devices: np.ndarray
    rate_h: np.ndarray | None = None  # stationary day-time pings an hour (realistic profiles)
    away_xy: np.ndarray | None = None  # where a device sleeps on its away nights
    sleeps_away: np.ndarray | None = None

    def day_rate_h(self) -> np.ndarray:
        """Stationary day-time pings an hour (historical profiles: the daily rate / 24)."""
        return self.ping_rate / 24.0 if self.rate_h is None else self.rate_h

    @property
    def n(self) -> int:
        return len(self.device_ids)


def _points_in_areas(
    rng: np.random.Generator, city: City, area_idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform points inside the given areas, kept out of POI cells (homes are not shops)."""
    ox, oy = city.area_origin(area_idx)
    x = ox + rng.uniform(0, city.area_size_m, len(area_idx))
    y = oy + rng.uniform(0, city.area_size_m, len(area_idx))
    for _ in range(20):
        bad = city.in_poi_cell(x, y)
        if not bad.any():
            break
        x[bad] = ox[bad] + rng.uniform(0, city.area_size_m, bad.sum())
        y[bad] = oy[bad] + rng.uniform(0, city.area_size_m, bad.sum())
    return x, y


def build_panel(seed: int, city: City, devices: int, profile: Profile) -> Panel:
    """Sample ``devices`` panel members: per-area coverage varies (relative 0.5 to 3)."""
    rng = np.random.default_rng([seed, 202])
    rel = rng.uniform(*COVERAGE_RANGE, city.n_areas)
    weight = city.population * rel
    area_devices = rng.multinomial(devices, weight / weight.sum())
    if np.any(area_devices > city.population // 2):
        raise ValueError(
            f"{devices} devices is too many for a population of {city.population.sum()}"
        )
    home_area = np.repeat(np.arange(city.n_areas), area_devices)
    home_area = home_area[rng.permutation(devices)]
    panel = _people(rng, city, home_area, profile, area_devices)
    if profile.local_sampling or profile.away_share > 0:
        _realistic(np.random.default_rng([seed, 203]), city, panel, profile)
    return panel


def _realistic(rng: np.random.Generator, city: City, panel: Panel, profile: Profile) -> None:
    """In place: per-device hourly rates and away places (own generator: the historical
    profiles' draws are untouched)."""
    n = panel.n
    if profile.local_sampling:
        assert profile.rate_median_h is not None
        rate = rng.lognormal(np.log(profile.rate_median_h), profile.rate_sigma, n)
        panel.rate_h = np.clip(rate, profile.rate_min_h, profile.rate_max_h)
    day_shift = np.flatnonzero(~panel.night_shift)
    away = np.zeros(n, dtype=bool)
    away[rng.choice(day_shift, round(len(day_shift) * profile.away_share), replace=False)] = True
    ax, ay = _points_in_areas(rng, city, rng.integers(0, city.n_areas, n))
    panel.sleeps_away = away
    panel.away_xy = np.column_stack([ax, ay])


def _people(
    rng: np.random.Generator,
    city: City,
    home_area: np.ndarray,
    profile: Profile,
    area_devices: np.ndarray,
) -> Panel:
    n = len(home_area)
    hx, hy = _points_in_areas(rng, city, home_area)
    work_area = rng.choice(city.n_areas, n, p=city.job_weight / city.job_weight.sum())
    wx, wy = _points_in_areas(rng, city, work_area)
    night = rng.permutation(n) < round(n * profile.night_shift_share)
    speed = np.where(rng.random(n) < 0.6, rng.uniform(7, 11, n), rng.uniform(3.5, 6, n))
    ping_rate = profile.pings_per_day * rng.lognormal(-0.125, 0.5, n)
    return Panel(
        device_ids=np.array([f"d{i:06d}" for i in range(n)], dtype=object),
        home_xy=np.column_stack([hx, hy]),
        home_area=home_area,
        work_xy=np.column_stack([wx, wy]),
        night_shift=night,
        speed_mps=speed,
        ping_rate=ping_rate,
        area_devices=area_devices,
    )


def shadow_population(seed: int, city: City, profile: Profile, n: int = 16_000) -> Panel:
    """People drawn like the population (not the panel), to measure how a day's visits fall
    into a UTC day when routines follow a non-UTC clock."""
    rng = np.random.default_rng([seed, 909])
    home_area = rng.choice(city.n_areas, n, p=city.population / city.population.sum())
    return _people(rng, city, home_area, profile, np.bincount(home_area, minlength=city.n_areas))


def choice_probabilities(home_xy: np.ndarray, city: City) -> np.ndarray:
    """P(a visit goes to POI j) for people living at ``home_xy``: shape (n, n_pois), rows sum to 1."""
    d = np.hypot(
        home_xy[:, None, 0] - city.poi_xy[None, :, 0], home_xy[:, None, 1] - city.poi_xy[None, :, 1]
    )
    w = city.poi_attract[None, :] * np.exp(-d / DECAY_M)
    return w / w.sum(axis=1, keepdims=True)


def apply_brand_lift(p: np.ndarray, rows: np.ndarray, brand_mask: np.ndarray, lift: float) -> None:
    """In place: multiply the brand's choice probability by (1 + lift) for ``rows``.

    The brand's POIs are scaled by (1 + lift); the others shrink so each row still sums to 1.
    """
    if lift == 0.0 or not rows.any():
        return
    sub = p[rows]
    b = sub[:, brand_mask].sum(axis=1, keepdims=True)
    b_new = np.minimum(b * (1.0 + lift), 0.999)
    sub[:, brand_mask] *= b_new / np.maximum(b, 1e-12)
    sub[:, ~brand_mask] *= (1.0 - b_new) / np.maximum(1.0 - b, 1e-12)
    p[rows] = sub


def visit_probability(p: np.ndarray) -> np.ndarray:
    """P(a person visits POI j at least once in a day) given per-visit choice probabilities."""
    r = 1.0 - p
    stay_away = np.full_like(p, VISITS_PER_DAY_P[-1])
    for pk in VISITS_PER_DAY_P[-2::-1]:
        stay_away *= r
        stay_away += pk
    return 1.0 - stay_away


def area_home_grid(city: City, per_side: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """A regular grid of home positions in every area (quadrature for area averages)."""
    off = (np.arange(per_side) + 0.5) / per_side * city.area_size_m
    gx, gy = np.meshgrid(off, off)
    ax, ay = city.area_origin(np.arange(city.n_areas))
    xy = np.stack(
        [(ax[:, None] + gx.ravel()[None, :]).ravel(), (ay[:, None] + gy.ravel()[None, :]).ravel()],
        axis=1,
    )
    return xy, np.repeat(np.arange(city.n_areas), per_side * per_side)
