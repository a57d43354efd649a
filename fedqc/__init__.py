"""fedqc: travelling-model federated learning on medical images with quality control of harmful data.

The Python API (docs/api.md) is :func:`run`, :func:`study` and :func:`load_run`, from :mod:`fedqc.api`; it is
imported on first use, so ``import fedqc`` loads nothing heavy.
"""

_API = ("run", "study", "load_run", "RunResult", "ArmResult", "StudyResult")
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        from fedqc import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedqc' has no attribute {name!r}")
