"""Frozen data shared by every layer: topology, snapshots, actions, quantile sketches.

Nothing in here does I/O or reads a clock.
"""
