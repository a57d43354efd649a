"""Thin Flower adapters: messages in, :mod:`fedqc.site` logic, messages out."""
