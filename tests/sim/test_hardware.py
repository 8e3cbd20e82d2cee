"""GPU models and MIG: profiles as NVML reports them, placements that never overlap."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuguardd.host.protocol import LeverError
from gpuguardd.sim.hardware import (
    A100_40,
    A100_80,
    GPU_MODELS,
    H100_80,
    GpuModel,
    MigState,
    pcie_h2d_bps,
)


@pytest.mark.parametrize("model", list(GPU_MODELS.values()), ids=list(GPU_MODELS))
def test_profiles_follow_the_mig_rules(model: GpuModel) -> None:
    by_size = {p.name.split(".")[0] + ("+me" if p.name.endswith("+me") else "")
               + ("x2" if p.memory_slices == 2 and p.compute_slices == 1 else ""): p
               for p in model.profiles}
    expect = {  # key: (create id, placements, size)
        "1g": (19, (0, 1, 2, 3, 4, 5, 6), 1), "1g+me": (20, (0, 1, 2, 3, 4, 5, 6), 1),
        "1gx2": (15, (0, 2, 4, 6), 2), "2g": (14, (0, 2, 4), 2), "3g": (9, (0, 4), 4),
        "4g": (5, (0,), 4), "7g": (0, (0,), 8),
    }
    assert set(by_size) == set(expect)
    for key, (cid, placements, size) in expect.items():
        p = by_size[key]
        assert (p.create_id, p.placements, p.size) == (cid, placements, size), key
        assert p.memory_bytes == p.memory_slices * model.memory_bytes // 8
        assert p.sm_count <= model.sm_count


def test_named_profiles_and_sm_counts() -> None:
    assert A100_40.profile("1g.5gb").sm_count == 14
    assert A100_40.profile("3g.20gb").memory_slices == 4
    assert A100_80.profile("2g.20gb").sm_count == 28
    assert H100_80.profile("1g.10gb").sm_count == 16
    assert H100_80.gpm and not A100_80.gpm
    with pytest.raises(KeyError, match="no MIG profile"):
        A100_40.profile("1g.10gb+me")


def test_pcie_effective_bandwidth() -> None:
    assert pcie_h2d_bps(3) == 12.5e9
    assert pcie_h2d_bps(4) == 25e9
    assert pcie_h2d_bps(5) == 50e9
    assert pcie_h2d_bps(4, 8) == 12.5e9


def test_create_only_at_valid_free_placements() -> None:
    ms = MigState(0, A100_40, enabled=True)
    one = ms.create("1g.5gb", 0)
    with pytest.raises(LeverError, match="cannot start at slice 1"):
        ms.create("2g.10gb", 1)
    with pytest.raises(LeverError, match="occupied"):
        ms.create("2g.10gb", 0)  # slice 0 is taken by the 1g
    ms.create("2g.10gb", 2)
    ms.destroy(one.gi_id)
    grown = ms.create("2g.10gb", 0)  # 1g -> 2g in place once slice 0 is free again
    assert (grown.start, grown.size) == (0, 2)
    with pytest.raises(LeverError, match="no GPU instance"):
        ms.destroy(42)
    off = MigState(1, A100_40, enabled=False)
    with pytest.raises(LeverError, match="MIG mode is disabled"):
        off.create("1g.5gb", 0)


ops = st.lists(
    st.tuples(st.booleans(), st.sampled_from([p.name for p in A100_80.profiles]),
              st.integers(0, 7)),
    max_size=40,
)


@given(ops)
def test_mig_placements_never_overlap(seq: list[tuple[bool, str, int]]) -> None:
    ms = MigState(0, A100_80, enabled=True)
    for create, profile, n in seq:
        if create:
            p = A100_80.profile(profile)
            used = ms.used_slices()
            fits = n in p.placements and not used & set(range(n, n + p.size))
            me_taken = profile.endswith("+me") and any(
                i.profile.endswith("+me") for i in ms.instances)
            if fits and not me_taken:
                ms.create(profile, n)
            else:
                with pytest.raises(LeverError):
                    ms.create(profile, n)
        elif ms.instances:
            ms.destroy(ms.instances[n % len(ms.instances)].gi_id)
        slices = [s for i in ms.instances for s in range(i.start, i.start + i.size)]
        assert len(slices) == len(set(slices))
        assert all(0 <= s < 8 for s in slices)
        for i in ms.instances:
            assert i.start in A100_80.profile(i.profile).placements
        assert len({i.gi_id for i in ms.instances}) == len(ms.instances)
