"""Quality control (filled in by the QC issue)."""

CRITERIA = {"reference": None}
GRANULARITIES = ("batch", "hierarchical")
