"""Fixtures shared with the host tests: the fake sysfs/procfs/cgroupfs tree of RealHost."""

from tests.host import test_real

tree = test_real.tree
