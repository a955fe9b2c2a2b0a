"""PySpark job scripts run by the ``spark`` resource, locally or on EMR (the same script).

``apply_by_device.py`` runs any per-device science function (``near_assets.science.engine``)
with ``groupBy(...).applyInPandas``. Modules here import ``dagster_pipes`` only, never
``dagster``: they are shipped to the cluster in the ``--py-files`` zip.
"""

JOB_SCRIPTS = ("apply_by_device.py",)
