#!/bin/bash
# EMR bootstrap action (every node): Python 3.11 and the libraries the job scripts import.
# Amazon Linux 2023 (EMR 7.x) ships python3.9; dagster-pipes and the science code need >= 3.10.
set -euo pipefail
sudo dnf install -y -q python3.11 python3.11-pip
sudo python3.11 -m pip install --quiet \
  "pandas>=2.2,<3" "pyarrow>=15" "numpy>=1.26" "numba>=0.60" "shapely>=2.0" \
  "scikit-learn>=1.5" "boto3>=1.34" "dagster-pipes==1.13.27"
