"""PlaceMatrix: refined place boundaries from where visitors actually stay (issue 16 item 2)."""

import dagster as dg

defs = dg.Definitions()
