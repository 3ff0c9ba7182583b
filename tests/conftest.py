"""Shared test fixtures."""

from __future__ import annotations

import os

# Tests never reach a model hub: the base model comes from a PyPI wheel on disk.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
