"""Actions to and from plain JSON-able dicts (journal, status endpoint)."""

from __future__ import annotations

import dataclasses
from typing import Any

from gpuguardd.model.actions import (
    Action,
    IoLimit,
    IoRelease,
    IoThrottle,
    Migrate,
    MigResize,
    MpsLimit,
    VgpuSet,
)
from gpuguardd.model.snapshot import Placement

_BY_KIND: dict[str, type[Any]] = {
    "io_throttle": IoThrottle,
    "io_release": IoRelease,
    "mps_limit": MpsLimit,
    "migrate": Migrate,
    "mig_resize": MigResize,
    "vgpu_set": VgpuSet,
}


class CodecError(ValueError):
    pass


def encode(action: Action) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": action.kind}
    for f in dataclasses.fields(action):
        if not f.init:
            continue
        v = getattr(action, f.name)
        if isinstance(v, IoLimit | Placement):
            v = dataclasses.asdict(v)
        out[f.name] = v
    return out


def decode(data: Any) -> Action:
    if not isinstance(data, dict) or data.get("kind") not in _BY_KIND:
        raise CodecError(f"not an action: {data!r:.80}")
    cls = _BY_KIND[data["kind"]]
    kwargs = {k: v for k, v in data.items() if k != "kind"}
    try:
        if "limit" in kwargs:
            kwargs["limit"] = IoLimit(**kwargs["limit"])
        for key in ("source", "to"):
            if key in kwargs:
                kwargs[key] = Placement(**kwargs[key])
        action: Action = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise CodecError(f"bad {data['kind']} action: {e}") from None
    return action


def encode_limit(limit: IoLimit) -> dict[str, Any]:
    return dataclasses.asdict(limit)


def decode_limit(data: Any) -> IoLimit:
    if not isinstance(data, dict):
        raise CodecError(f"not an io limit: {data!r:.80}")
    try:
        return IoLimit(**data)
    except TypeError as e:
        raise CodecError(f"bad io limit: {e}") from None
