"""Bad input, fuzzed: the config loader, the scenario loader, the push-socket decoder and the
metrics scraper always answer with a clear error (or a valid value) - never an exception."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuguardd import config
from gpuguardd.host.latency import METRICS, PromScraper
from gpuguardd.host.push import REASONS, PushReceiver
from gpuguardd.sim import scenario as scenario_mod

FUZZ = settings(deadline=None, max_examples=150,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

# -- a small TOML writer for generated documents ------------------------------------------------
scalars = (st.booleans() | st.integers(-(2**63), 2**63 - 1)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3)
                      | st.dictionaries(st.text("abcxyz_", min_size=1, max_size=5), c,
                                        max_size=3), max_leaves=6)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml_doc(doc: dict[str, Any]) -> str:
    out: list[str] = []
    for name, body in doc.items():
        tables = body if isinstance(body, list) else [body]
        for t in tables:
            out.append(f"[[{name}]]" if isinstance(body, list) else f"[{name}]")
            out += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in t.items()]
    return "\n".join(out) + "\n"


def keys_of(cls: type[Any]) -> list[str]:
    return [config.toml_key(f.name) for f in dataclasses.fields(cls)]


def table(cls: type[Any], extra: dict[str, st.SearchStrategy[Any]] | None = None
          ) -> st.SearchStrategy[dict[str, Any]]:
    special = extra or {}
    keys = [*keys_of(cls), "bogus_key"]
    return st.dictionaries(st.sampled_from(keys), values, max_size=6).flatmap(
        lambda d: st.fixed_dictionaries({k: special.get(k, st.just(v)) for k, v in d.items()}))


names = st.from_regex(r"[a-z0-9_-]{1,8}", fullmatch=True) | st.text(max_size=70)
cgroups = st.sampled_from(["system.slice/etl.service", "../etc", "/sys/fs/cgroup/x", "a/../b",
                           "", "/", "a//b", "ok/./x", "a\0b"]) | st.text(max_size=20)
tenants = table(config.TenantConfig, {
    "name": names, "class": st.sampled_from(["latency", "batch", "root"]), "cgroup": cgroups,
    "slo": table(config.SloConfig), "latency": table(config.LatencySourceConfig),
    "hooks": table(config.HooksConfig)})
config_docs = st.fixed_dictionaries({}, optional={
    "daemon": table(config.DaemonConfig), "metrics": table(config.MetricsConfig),
    "push": table(config.PushConfig), "policy": table(config.PolicyConfig),
    "tenant": st.lists(tenants, max_size=3)})

ERROR = re.compile(r"^(TOML syntax: |[\w\[\]\.\-]+: )")


def _finite_numbers(obj: Any) -> bool:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return all(_finite_numbers(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    if isinstance(obj, tuple | list):
        return all(_finite_numbers(x) for x in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True


@FUZZ
@given(doc=config_docs)
def test_config_loader_answers_every_document_with_a_config_or_key_path_errors(
        doc: dict[str, Any]) -> None:
    text = toml_doc(doc)
    try:
        cfg = config.loads(text)
    except config.ConfigError as e:
        assert e.errors and all(ERROR.match(err) for err in e.errors), e.errors
        return
    assert _finite_numbers(cfg), "a nan/inf got through"
    for t in cfg.tenants:
        assert config.TENANT_NAME.match(t.name)
        if t.cgroup is not None:
            assert not t.cgroup.startswith("/") and ".." not in t.cgroup.split("/")


@FUZZ
@given(text=st.text(max_size=300))
def test_config_loader_survives_arbitrary_text(text: str) -> None:
    try:
        config.loads(text)
    except config.ConfigError as e:
        assert e.errors


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_config_rejects_non_finite_numbers(value: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        config.loads(f"[daemon]\ninterval_s = {value}\n")
    assert e.value.errors == [f"daemon.interval_s: must be a finite number, got {value}"]


def test_config_file_that_is_not_a_file_or_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    for p in (tmp_path, tmp_path / "bin.toml", tmp_path / "missing.toml"):
        with pytest.raises(config.ConfigError) as e:
            config.load(p)
        assert str(p) in e.value.errors[0]


# -- scenarios ----------------------------------------------------------------------------------
def _base_scenario() -> dict[str, Any]:
    return {
        "scenario": {"name": "fuzz", "seconds": 60, "seed": 1},
        "host": {"preset": "p4d", "mig": {"0": ["1g.5gb", "3g.20gb"]}},
        "tenant": [
            {"name": "t1", "kind": "inference", "class": "latency", "gpu": 0, "instance": 0,
             "model": "Qwen3-0.6B", "slo": {"ttft_p99_ms": 15.0},
             "arrivals": {"rate_rps": 10}},
            {"name": "t2", "kind": "etl", "class": "batch", "gpu": 0, "instance": 1,
             "device": "nvme0n1", "read_bps": 1e9},
            {"name": "t3", "kind": "training", "gpu": 1, "step_s": 0.4},
        ],
        "event": [{"at_s": 10, "tenant": "t2", "action": "stop"}],
    }


_SC_KEYS = [*scenario_mod._TENANT_KEYS, "name", "kind", "class", "slo", "arrivals", "junk"]
#: (where, key): where is a top-level table, "tenant0".."tenant2" or "event0"
_SPOTS = ([("scenario", k) for k in ("name", "seconds", "seed", "description", "junk")]
          + [("host", k) for k in ("preset", "mig", "topology", "gpu", "junk")]
          + [(f"tenant{i}", k) for i in range(3) for k in _SC_KEYS]
          + [("event0", k) for k in ("at_s", "tenant", "action", "rate_rps", "junk")])
spot_values = (values | st.sampled_from(["inference", "etl", "training", "latency", "batch",
                                         "t1", "t2", "set", "start", "nvme0n1", "1g.5gb",
                                         "a100-pcie", "h100", "p4d-x2", "Qwen3-8B", "../x"])
               | st.integers(-2, 9) | st.sampled_from([math.nan, math.inf, 0.0, 1e308]))


def _mutated(muts: list[tuple[tuple[str, str], Any]]) -> dict[str, Any]:
    doc = _base_scenario()
    for (where, key), val in muts:
        if where.startswith(("tenant", "event")):
            kind, i = where[:-1], int(where[-1])
            doc[kind][i][key] = val
        else:
            doc[where][key] = val
    return doc


scenario_docs = st.lists(st.tuples(st.sampled_from(_SPOTS), spot_values),
                         min_size=1, max_size=3).map(_mutated)


@settings(FUZZ, max_examples=120)
@given(doc=scenario_docs)
def test_scenario_loader_answers_every_document_with_a_scenario_or_errors(
        doc: dict[str, Any]) -> None:
    try:
        sc = scenario_mod.loads(toml_doc(doc), source="fuzz.toml")
    except scenario_mod.ScenarioError as e:
        assert e.errors and all(isinstance(x, str) and x for x in e.errors)
        return
    assert math.isfinite(sc.seconds) and sc.seconds > 0 and sc.tenants
    for t in sc.tenants:
        for f in dataclasses.fields(t):
            v = getattr(t, f.name)
            assert not isinstance(v, float) or math.isfinite(v), (f.name, v)


@FUZZ
@given(text=st.text(max_size=300))
def test_scenario_loader_survives_arbitrary_text(text: str) -> None:
    try:
        scenario_mod.loads(text)
    except scenario_mod.ScenarioError as e:
        assert e.errors


# -- push decoder -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rx(tmp_path_factory: pytest.TempPathFactory) -> typing.Iterator[PushReceiver]:
    r = PushReceiver(tmp_path_factory.mktemp("push") / "latency.sock", ["t1", "t2"],
                     max_samples_per_tenant=1000)
    yield r
    r.close()


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=12)
datagrams = st.one_of(
    st.binary(max_size=300),
    json_like.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"tenant": st.sampled_from(["t1", "t2", "t3"]) | json_like},
                          optional={"ttft_s": json_like, "tpot_s": json_like}).map(
        lambda v: json.dumps(v).encode()),
    st.integers(min_value=10**300, max_value=10**400).map(
        lambda n: b'{"tenant": "t1", "ttft_s": %d}' % n),
    st.integers(1, 200_000).map(lambda n: b"[" * n),
)


@FUZZ
@given(data=datagrams)
def test_push_decoder_counts_or_accepts_every_datagram(rx: PushReceiver, data: bytes) -> None:
    before = sum(rx.rejected().values()), rx.accepted_samples
    reason = rx.feed(data)
    assert reason is None or reason in REASONS
    after = sum(rx.rejected().values()), rx.accepted_samples
    assert after[0] == before[0] + (reason is not None)
    assert (after[1] > before[1]) == (reason is None)
    for w in rx.drain().values():
        assert w.ttft.count == 0 or math.isfinite(w.ttft.quantile(0.99) or 0.0)


def test_huge_json_integer_is_a_bad_value_not_a_dead_receiver(rx: PushReceiver) -> None:
    assert rx.feed(b'{"tenant": "t1", "ttft_s": 1' + b"0" * 400 + b"}") == "bad_value"


# -- the metrics scraper ------------------------------------------------------------------------
_NAMES = [n for kinds in METRICS.values() for ns in kinds.values() for n in ns]
les = st.sampled_from(["0.01", "0.1", "1", "+Inf", "NaN", "-1", "x", "1e400"])
nums = st.sampled_from(["0", "1", "5", "1e9", "NaN", "-3", "+Inf", "abc", "1e400"])
lines = st.one_of(
    st.tuples(st.sampled_from(_NAMES), les, nums, st.sampled_from(["", ',model_name="m"',
                                                                   ',engine="1"'])).map(
        lambda t: f'{t[0]}_bucket{{le="{t[1]}"{t[3]}}} {t[2]}'),
    st.sampled_from(_NAMES).map(lambda n: f"# TYPE {n} histogram"),
    st.tuples(st.sampled_from(_NAMES), nums).map(lambda t: f"{t[0]}_created {t[1]}"),
    st.tuples(st.sampled_from(_NAMES), nums).map(lambda t: f"{t[0]}_count {t[1]}"),
    st.text(max_size=30))


@FUZZ
@given(scrapes=st.lists(st.lists(lines, max_size=12).map("\n".join), min_size=1, max_size=4))
def test_scraper_turns_any_exposition_into_a_window_or_unknown(scrapes: list[str]) -> None:
    for flavor in ("vllm", "sglang"):
        s = PromScraper("http://127.0.0.1:1/metrics", flavor, fetch=lambda u, t: "")
        for text in scrapes:
            r = s.update(text)
            if not r.window.ok:
                assert r.error
                continue
            for sk in (r.window.ttft, r.window.tpot):
                assert sk.count >= 0
                p99 = sk.quantile(0.99)
                assert p99 is None or (math.isfinite(p99) and p99 >= 0)
            assert r.requests_total is None or math.isfinite(r.requests_total)


# -- floods: per-tenant rate and memory caps ----------------------------------------------------
def test_flood_is_capped_per_tenant_per_tick_and_others_still_get_through(
        tmp_path: Path) -> None:
    import socket
    import time

    rx = PushReceiver(tmp_path / "latency.sock", ["t1", "t2"], max_samples_per_tenant=500)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            batch = json.dumps({"tenant": "t1", "ttft_s": [0.01] * 100}).encode()
            for _ in range(50):  # 5,000 samples from one noisy tenant
                s.sendto(batch, str(rx.path))
            s.sendto(json.dumps({"tenant": "t2", "ttft_s": [0.02] * 10}).encode(),
                     str(rx.path))
            s.sendto(b"x" * (rx.max_datagram + 1), str(rx.path))
        deadline = time.monotonic() + 5
        while sum(rx.rejected().values()) < 46 and time.monotonic() < deadline:
            time.sleep(0.01)
        w = rx.drain()
        assert w["t1"].ttft.count == 500, "the per-tenant cap"
        assert w["t2"].ttft.count == 10, "one tenant's flood does not starve another"
        assert rx.rejected()["rate_limited"] == 45 and rx.rejected()["oversize"] == 1
    finally:
        rx.close()


def test_unknown_tenant_names_and_distinct_values_do_not_grow_memory(tmp_path: Path) -> None:
    from gpuguardd.model.sketch import MAX_BUCKETS

    rx = PushReceiver(tmp_path / "latency.sock", ["t1", "t2"], max_samples_per_tenant=10_000)
    try:
        for i in range(5000):
            rx.feed(json.dumps({"tenant": f"intruder{i}", "ttft_s": 0.01}).encode())
        assert set(rx._bufs) == {"t1", "t2"}  # no state for names nobody configured
        assert rx.rejected()["unknown_tenant"] == 5000
        for chunk in range(4):  # 4,000 distinct values over the whole accepted range
            xs = [10 ** (-6 + 9.5 * (chunk * 1000 + i) / 4000) for i in range(1000)]
            assert rx.feed(json.dumps({"tenant": "t1", "ttft_s": xs}).encode()) is None
        assert len(rx._bufs["t1"].ttft.counts) <= MAX_BUCKETS
        assert rx.drain()["t1"].ttft.count == 4000
        assert rx.feed(b'{"tenant": "t1", "ttft_s": 3601}') == "bad_value"
    finally:
        rx.close()


def test_receiver_thread_survives_a_decoder_failure(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import time

    from gpuguardd.host import push as push_mod

    rx = PushReceiver(tmp_path / "latency.sock", ["t1"])
    real_loads = json.loads
    calls = [0]

    def flaky(data: bytes) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("decoder bug")
        return real_loads(data)

    monkeypatch.setattr(push_mod.json, "loads", flaky)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            for _ in range(2):
                s.sendto(b'{"tenant": "t1", "ttft_s": 0.01}', str(rx.path))
        deadline = time.monotonic() + 5
        while rx.accepted_samples < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rx.accepted_samples == 1 and rx.rejected()["malformed"] == 1
    finally:
        rx.close()
