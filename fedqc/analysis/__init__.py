"""What a run folder says: metrics overall and by subgroup (``metrics``), plots, the report, and ``infer``."""
