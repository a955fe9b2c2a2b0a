#!/bin/bash
# EMR bootstrap action (every node): the libraries the job scripts import, for Python 3.11.
# emr-spark-8.0.0 ships Python 3.11, 3.12 and 3.13 (dagster-pipes and the science code need
# >= 3.10); the steps run /usr/bin/python3.11 (spark.pyspark.python). Install it only if absent.
set -euo pipefail
command -v python3.11 >/dev/null || sudo dnf install -y -q python3.11
python3.11 -m pip --version >/dev/null 2>&1 || sudo dnf install -y -q python3.11-pip
sudo python3.11 -m pip install --quiet \
  "pandas>=2.2,<3" "pyarrow>=15" "numpy>=1.26" "numba>=0.60" "shapely>=2.0" \
  "scikit-learn>=1.5" "scipy>=1.11" "boto3>=1.34" "dagster-pipes==1.13.27"
