"""How the model moves between sites: the travelling model (``travelling``)."""
