"""The synthetic city: a square region, census-like areas and POIs with polygons and brands.

Everything is laid out in a local metric frame (x east, y north, metres from the south-west
corner of the region) and converted to WGS84 with an equirectangular projection, which is
exact to well under a metre over a 12 km box. The region is centred on ``CENTER_LAT`` /
``CENTER_LON`` unless a profile places it elsewhere (:class:`Frame`); the layout (areas, POIs,
homes in metres) does not depend on where the city lies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

CENTER_LAT = 40.70
CENTER_LON = -74.00
REGION_M = 12_000.0
AREA_GRID = 8
POI_CELL_M = 100.0
M_PER_DEG_LAT = 111_320.0

BRANDS: dict[str, tuple[str, int]] = {
    "FreshMart": ("grocery", 12),
    "GreenBasket": ("grocery", 8),
    "BurgerBarn": ("restaurant", 12),
    "PizzaPlanet": ("restaurant", 8),
    "QuickFuel": ("fuel", 8),
    "BeanHouse": ("coffee", 14),
    "MediCare Pharmacy": ("pharmacy", 8),
    "FitZone": ("gym", 6),
}
UNBRANDED_CATEGORIES = {
    "restaurant": 0.30,
    "coffee": 0.10,
    "retail": 0.25,
    "grocery": 0.10,
    "bar": 0.10,
    "park": 0.05,
    "salon": 0.10,
}
CATEGORY_PULL = {
    "grocery": 1.6,
    "restaurant": 1.2,
    "coffee": 1.3,
    "fuel": 0.8,
    "pharmacy": 0.9,
    "gym": 0.7,
    "retail": 1.0,
    "bar": 0.8,
    "park": 1.0,
    "salon": 0.5,
}


@dataclass(frozen=True)
class Frame:
    """Where the region lies: local metres <-> WGS84 around a centre (lat, lon)."""

    center_lat: float = CENTER_LAT
    center_lon: float = CENTER_LON

    @property
    def m_per_deg_lon(self) -> float:
        return M_PER_DEG_LAT * float(np.cos(np.radians(self.center_lat)))

    @property
    def south(self) -> float:
        return self.center_lat - REGION_M / 2 / M_PER_DEG_LAT

    @property
    def west(self) -> float:
        return self.center_lon - REGION_M / 2 / self.m_per_deg_lon

    def to_latlon(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Local metres (x east, y north) to WGS84 degrees (lat, lon), float64."""
        return (
            self.south + np.asarray(y) / M_PER_DEG_LAT,
            self.west + np.asarray(x) / self.m_per_deg_lon,
        )

    def to_xy(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """WGS84 degrees to local metres (x east, y north)."""
        return (
            (np.asarray(lon) - self.west) * self.m_per_deg_lon,
            (np.asarray(lat) - self.south) * M_PER_DEG_LAT,
        )

    def bbox(self) -> dict[str, float]:
        north, east = self.to_latlon(np.array(REGION_M), np.array(REGION_M))
        return {"south": self.south, "west": self.west, "north": float(north), "east": float(east)}


DEFAULT_FRAME = Frame()


def to_latlon(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local metres (x east, y north) to WGS84 degrees (lat, lon) in the default frame."""
    return DEFAULT_FRAME.to_latlon(x, y)


def to_xy(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """WGS84 degrees to local metres (x east, y north) in the default frame."""
    return DEFAULT_FRAME.to_xy(lat, lon)


def bbox() -> dict[str, float]:
    return DEFAULT_FRAME.bbox()


def _polygon_wkt(
    x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray, frame: Frame = DEFAULT_FRAME
) -> list[str]:
    lat0, lon0 = frame.to_latlon(x0, y0)
    lat1, lon1 = frame.to_latlon(x1, y1)
    return [
        f"POLYGON (({a:.7f} {b:.7f}, {c:.7f} {b:.7f}, {c:.7f} {d:.7f}, {a:.7f} {d:.7f}, "
        f"{a:.7f} {b:.7f}))"
        for a, b, c, d in zip(lon0, lat0, lon1, lat1, strict=True)
    ]


@dataclass
class City:
    """Areas and POIs as DataFrames (CONTRACTS columns) plus the arrays the simulation uses."""

    areas: pd.DataFrame
    pois: pd.DataFrame
    area_size_m: float
    population: np.ndarray
    job_weight: np.ndarray
    poi_xy: np.ndarray
    poi_half: np.ndarray
    poi_attract: np.ndarray
    poi_brand: np.ndarray
    poi_cells: set[int] = field(default_factory=set)
    frame: Frame = DEFAULT_FRAME

    @property
    def n_areas(self) -> int:
        return len(self.population)

    def area_of(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Index of the area holding each point (row-major, south-west first)."""
        col = np.clip((x // self.area_size_m).astype(np.int64), 0, AREA_GRID - 1)
        row = np.clip((y // self.area_size_m).astype(np.int64), 0, AREA_GRID - 1)
        return row * AREA_GRID + col

    def area_origin(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (idx % AREA_GRID) * self.area_size_m, (idx // AREA_GRID) * self.area_size_m

    def in_poi_cell(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """True where a point falls in a 100 m grid cell that holds a POI."""
        n = int(REGION_M // POI_CELL_M)
        cell = (y // POI_CELL_M).astype(np.int64) * n + (x // POI_CELL_M).astype(np.int64)
        return np.isin(cell, np.fromiter(self.poi_cells, dtype=np.int64))


def build_city(seed: int, n_pois: int = 300, frame: Frame = DEFAULT_FRAME) -> City:
    """Areas on an 8 x 8 grid (1.5 km squares) and ``n_pois`` non-overlapping POI rectangles."""
    rng = np.random.default_rng([seed, 101])
    size = REGION_M / AREA_GRID
    idx = np.arange(AREA_GRID * AREA_GRID)
    ox, oy = (idx % AREA_GRID) * size, (idx // AREA_GRID) * size
    cx, cy = ox + size / 2, oy + size / 2
    dist_center = np.hypot(cx - REGION_M / 2, cy - REGION_M / 2)
    population = np.clip(
        np.round(rng.lognormal(np.log(9_000), 0.6, len(idx)) / 10) * 10, 2_000, 30_000
    ).astype(np.int64)
    income = np.round(rng.lognormal(np.log(65_000), 0.35, len(idx)), -2)
    shares = rng.dirichlet([3.0, 3.0, 2.5, 1.5], len(idx))[:, :3]
    areas = pd.DataFrame(
        {
            "area_id": [f"A{i:03d}" for i in idx],
            "geometry_wkt": _polygon_wkt(ox, oy, ox + size, oy + size, frame),
            "population": population,
            "median_income": income.astype(np.float64),
            "age_18_34": shares[:, 0].round(4),
            "age_35_54": shares[:, 1].round(4),
            "age_55_plus": shares[:, 2].round(4),
        }
    )
    job_weight = np.exp(-dist_center / 3_000.0) + 0.15

    n_cells = int(REGION_M // POI_CELL_M)
    ccx = (np.arange(n_cells * n_cells) % n_cells + 0.5) * POI_CELL_M
    ccy = (np.arange(n_cells * n_cells) // n_cells + 0.5) * POI_CELL_M
    cell_w = np.exp(-np.hypot(ccx - REGION_M / 2, ccy - REGION_M / 2) / 4_000.0)
    cells = rng.choice(n_cells * n_cells, n_pois, replace=False, p=cell_w / cell_w.sum())
    px, py = ccx[cells], ccy[cells]
    half = rng.uniform(15.0, 40.0, (n_pois, 2))

    brand_list = [b for b, (_, k) in BRANDS.items() for _ in range(k)][:n_pois]
    brand_col = np.array(brand_list + [None] * (n_pois - len(brand_list)), dtype=object)
    rng.shuffle(brand_col)
    cats = np.array(list(UNBRANDED_CATEGORIES))
    cat_p = np.array(list(UNBRANDED_CATEGORIES.values()))
    category = rng.choice(cats, n_pois, p=cat_p / cat_p.sum()).astype(object)
    branded = brand_col != None  # noqa: E711
    category[branded] = [BRANDS[b][0] for b in brand_col[branded]]
    counters: dict[str, int] = {}
    names = []
    for b, c in zip(brand_col, category, strict=True):
        key = b or c
        counters[key] = counters.get(key, 0) + 1
        names.append(f"{b} #{counters[key]}" if b else f"{c.title()} {counters[key]}")
    attract = rng.lognormal(0.0, 0.7, n_pois) * np.array([CATEGORY_PULL[c] for c in category])
    pois = pd.DataFrame(
        {
            "poi_id": [f"P{i:05d}" for i in range(n_pois)],
            "name": names,
            "brand": pd.array(brand_col, dtype="string"),
            "category": category.astype(str),
            "geometry_wkt": _polygon_wkt(
                px - half[:, 0], py - half[:, 1], px + half[:, 0], py + half[:, 1], frame
            ),
        }
    )
    return City(
        areas=areas,
        pois=pois,
        area_size_m=size,
        population=population,
        job_weight=job_weight,
        poi_xy=np.column_stack([px, py]),
        poi_half=half,
        poi_attract=attract,
        poi_brand=brand_col,
        poi_cells=set(cells.tolist()),
        frame=frame,
    )
