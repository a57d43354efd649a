"""Deployment tooling: per-site folders and the docker-compose topology (``sites``: ``fedqc sites split`` and
``fedqc sites compose``), TLS certificates and SuperNode keys (``certificates``)."""
