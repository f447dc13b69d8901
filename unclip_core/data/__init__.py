"""Datasets for training and evaluation; ShapesWorld is the bundled procedurally rendered world."""
from unclip_core.data.shapes import *  # noqa: F401,F403
from unclip_core.data.shapes import __all__  # noqa: F401
