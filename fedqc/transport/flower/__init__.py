"""Flower at the edge, in three parts.

- **The adapter**: ``codec`` (what crosses the wire, its record keys named), ``grid`` (the
  server's :class:`~fedqc.transport.Transport` over a Flower grid), ``client_app`` (a site's
  ClientApp), ``server_app`` (fedqc's one ServerApp: it hands the grid transport to a
  caller's function), ``simulation`` (Flower's simulation engine) and ``env`` (settings,
  applied here, before any module of this package imports Flower).
- **The fast path** (``fast``): every patch of Flower internals, behind one version check.
- **Deployment tooling** (``deploy``): per-site folders, the docker-compose topology,
  certificates and SuperNode keys.
"""

from fedqc.transport.flower.env import apply_flower_env

apply_flower_env()
