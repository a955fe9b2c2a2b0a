"""PySpark job scripts run by the ``spark`` resource, locally or on EMR (the same script).

``apply_by_device.py`` runs any per-device science function (``near_assets.science.engine``)
with ``groupBy(...).applyInPandas``; ``clean_pings.py`` is the Spark engine of ``clean_pings``
(Spark SQL over a day's raw files); ``profiles.py`` that of demographics, brand affinity,
campaign and aggregate insights (``--task``); ``audience.py`` that of audience estimates;
``models.py`` that of the models ``visit_history``, ``high_density_points`` and
``identity_graph`` (``--task``); ``placematrix.py`` that of ``place_boundaries`` (PlaceMatrix).
Job scripts import ``dagster_pipes`` only, never
``dagster``: they are shipped to the cluster in the ``--py-files`` zip (``deploy.py`` builds and
uploads it; it runs on the Dagster side only).
"""

from pathlib import Path

JOBS_DIR = Path(__file__).resolve().parent
APPLY_BY_DEVICE = JOBS_DIR / "apply_by_device.py"
CLEAN_PINGS = JOBS_DIR / "clean_pings.py"
PROFILES = JOBS_DIR / "profiles.py"
AUDIENCE = JOBS_DIR / "audience.py"
MODELS = JOBS_DIR / "models.py"
PLACEMATRIX = JOBS_DIR / "placematrix.py"
JOB_SCRIPTS = (APPLY_BY_DEVICE, CLEAN_PINGS, PROFILES, AUDIENCE, MODELS, PLACEMATRIX)
"""The job scripts uploaded to ``EMR_SCRIPTS_S3`` (``deploy.py``)."""
