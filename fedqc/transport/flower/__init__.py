"""Flower at the edge: thin adapters that carry arrays, configs and counts between the server and sites.

``codec`` (what crosses the wire), ``grid`` (the server's :class:`~fedqc.transport.Transport`
over a Flower grid), ``client_app`` (a site's ClientApp), ``server_app`` (a ServerApp that
hands the grid transport to a caller's function), ``simulation`` (Flower's simulation engine),
``deployment`` (per-site folders and the docker-compose topology), ``fast_supernode`` and
``warm_superexec`` (the deployment's fast path: Flower's SuperNode with shorter waits, and
a SuperExec that forks warm ClientApps), ``pull_backoff`` (the fast path's short first
retry of Flower's object pulls) and ``env`` (settings, applied here,
before any module of this package imports Flower).
"""

from fedqc.transport.flower.env import apply_flower_env

apply_flower_env()
