"""What one center does, in plain Python: train a visit, score scans, audit its images. No Flower here."""

from fedqc.site.site import Site

__all__ = ["Site"]
