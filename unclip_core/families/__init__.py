"""Importers of the open unCLIP families: each converts a family's published folder (diffusers layout) into our
pipeline folder, which the one `UnCLIP` class runs from the data it records (conventions, stage info, sampling).

karlo: kakaobrain/karlo-v1-alpha (`import_karlo`).
"""
