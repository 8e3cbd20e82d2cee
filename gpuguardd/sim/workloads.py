"""Tenants of the simulated host: an LLM inference server, an ETL job, a training job.

Interference reaches a tenant only through the byte and FLOP flows it shares with others (see
SIMULATION.md): KV-cache blocks and input payloads over PCIe, prefill FLOPs over the SMs of its
GPU or instance, decode bytes over HBM, host-side delay on its NUMA node, and queueing. The
tenants ask their environment (the SimHost) for flows and shares; they never see each other.
"""

from __future__ import annotations

import heapq
import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from gpuguardd.model.actions import IoLimit
from gpuguardd.model.llm import LlmArch, builtin
from gpuguardd.model.snapshot import Placement
from gpuguardd.sim.calibration import GpuCalibration, ModelCost
from gpuguardd.sim.events import EventLoop
from gpuguardd.sim.fabric import INF, Flow
from gpuguardd.sim.traces import Trace

#: block-I/O request size of the ETL reader (io.stat counts ``rios`` in these)
IO_SIZE_BYTES = 1 << 20
#: time constant of the prefill-busy average that stretches decode steps, seconds
RHO_TAU_S = 1.0


@dataclass(frozen=True, slots=True)
class TenantSpec:
    """One ``[[tenant]]`` of a scenario, validated (units in the names).

    Keys beyond CONTRACTS.md are workload parameters a real deployment has too: prompt and
    output lengths, how much of a prompt a prefix hit covers, the ETL's chunk size, a training
    step's time and batch bytes, and the weights with which a tenant competes (``streams``:
    DMA copies in flight on PCIe; ``sm_weight``: how hard its kernels fill the SMs of a shared
    pool - a training job's large grids take more than an inference server's).
    """

    name: str
    kind: str  # inference | etl | training
    tenant_class: str  # latency | batch
    gpu: int = 0
    instance: int | None = None  # index into the GPU's initial MIG layout
    restartable: bool | None = None
    ttft_p99_ms: float | None = None
    tpot_p99_ms: float | None = None
    # inference
    model: str = "llama2-7b"  # a gpuguardd.model.llm built-in
    rate_rps: float = 10.0  # Poisson arrivals (unless ``trace``)
    trace: Trace | None = None
    kv_offload: bool = False  # prefix-cache KV in host memory, loaded over PCIe on a hit
    input_bytes_per_request: float = 0.0  # extra host-to-device payload per request
    prompt_tokens: int = 512  # Poisson arrivals: mean prompt length
    output_tokens: int = 128  # Poisson arrivals: mean output length
    token_sigma: float = 0.25  # lognormal spread of both lengths around their mean
    prefix_hit_rate: float = 0.3  # without Mooncake hash_ids: P(prefix hit)
    prefix_fraction: float = 0.75  # share of the prompt a hit covers
    max_batch_tokens: int = 2048  # new tokens per prefill iteration (chunked-prefill budget)
    max_batch: int = 256  # running sequences
    host_delay_ms: float = 0.3  # tokenisation and scheduling on the host
    # etl
    device: str | None = None  # block device name or MAJ:MIN; default: first on its NUMA node
    read_bps: float = 2.0e9  # what the job reads when nothing limits it
    chunk_bytes: float = 64 * 2**20  # staging buffer copied to the GPU per transfer
    buffers: int = 2  # staging buffers (read-ahead depth)
    # training
    step_s: float = 0.5  # step time alone on a whole GPU
    batch_bytes: float = 256 * 2**20  # data loaded to the GPU per step
    hbm_fraction: float = 0.3  # HBM bandwidth it uses of its pool
    # sharing
    streams: float = 1.0  # PCIe weight: DMA transfers in flight
    sm_weight: float = 1.0  # SM weight under MPS/time-slicing
    mps_pct: int | None = None  # initial MPS active-thread percentage
    share_pct: int | None = None  # initial HAMi compute share
    memory_limit_bytes: int | None = None  # initial HAMi memory limit

    @property
    def may_restart(self) -> bool:
        return self.restartable if self.restartable is not None else self.tenant_class == "batch"


class Env(Protocol):
    """What a tenant may ask of the host it runs on."""

    loop: EventLoop
    layer_overhead_s: float

    def pcie_flow(self, tenant: Tenant, nbytes: float, weight: float,
                  on_done: Callable[[float], None]) -> Flow: ...

    def cancel_flow(self, flow: Flow) -> None: ...

    def disk_flow(self, tenant: Tenant, device: str, nbytes: float, cap: float,
                  on_done: Callable[[float], None]) -> Flow: ...

    def set_flow_cap(self, flow: Flow, cap: float) -> None: ...

    def sm_fraction(self, tenant: Tenant) -> float: ...

    def hbm_fraction(self, tenant: Tenant) -> float: ...

    def host_delay(self, tenant: Tenant) -> tuple[float, float]:
        """Host-side delay of the tenant's requests right now: (fixed part, mean of the
        exponential tail), seconds."""
        ...

    def placement_memory_bytes(self, tenant: Tenant) -> int: ...

    def calibration(self, tenant: Tenant) -> GpuCalibration: ...

    def note_busy(self, tenant: Tenant, seconds: float, sm_fraction: float,
                  hbm_bytes: float) -> None: ...


class Draws:
    """Random variates drawn from a generator in blocks (one numpy call per 4096 draws)."""

    __slots__ = ("_buf", "_draw", "_i")

    def __init__(self, draw: Callable[[int], np.ndarray]) -> None:
        self._draw = draw
        self._buf: list[float] = []
        self._i = 0

    def next(self) -> float:
        if self._i >= len(self._buf):
            self._buf = self._draw(4096).tolist()
            self._i = 0
        self._i += 1
        return self._buf[self._i - 1]


class Tenant(ABC):
    """State every tenant kind shares: placement, lifecycle, limits, counters.

    ``up``: the process exists (false during a restart's downtime or after a stop lever);
    ``active``: the scenario has its workload switched on. Work happens when both are true.
    ``epoch`` voids callbacks scheduled before a halt.
    """

    kind = "tenant"

    def __init__(self, spec: TenantSpec, placement: Placement, env: Env,
                 rng: np.random.Generator) -> None:
        self.spec = spec
        self.name = spec.name
        self.placement = placement
        self.env = env
        self.rng = rng
        self.normal = Draws(rng.standard_normal)
        self.exponential = Draws(rng.standard_exponential)
        self.up = True
        self.active = True
        self.epoch = 0
        self.mps_pct: int | None = spec.mps_pct
        self.share_pct: int | None = spec.share_pct
        self.pending_share_pct: int | None = spec.share_pct
        self.memory_limit_bytes: int | None = spec.memory_limit_bytes
        self.io_limits: dict[str, IoLimit] = {}
        self.downtime_s = 0.0
        self.down_since: float | None = None
        #: mean demand for SMs while active (inference: its prefill-busy fraction)
        self.rho = 0.0

    @property
    def working(self) -> bool:
        return self.up and self.active

    @property
    def uses_sm(self) -> bool:
        return True

    def go_down(self, t: float) -> None:
        if self.up:
            self.halt(t)
            self.up = False
            self.down_since = t

    def come_up(self, t: float) -> None:
        if not self.up:
            self.up = True
            if self.down_since is not None:
                self.downtime_s += t - self.down_since
            self.down_since = None
            if self.active:
                self.begin(t)

    def set_active(self, t: float, active: bool) -> None:
        if active == self.active:
            return
        if not active and self.up:
            self.halt(t)
        self.active = active
        if active and self.up:
            self.begin(t)

    def downtime(self, now: float) -> float:
        return self.downtime_s + (now - self.down_since if self.down_since is not None else 0.0)

    def apply_spec(self, t: float, spec: TenantSpec) -> None:
        """A scenario ``set`` event: new workload parameters from ``t`` on."""
        self.spec = spec

    def memory_need_bytes(self) -> int:
        """GPU memory the process needs to start (batch jobs: assumed to fit)."""
        return 0

    # -- provided by each kind ----------------------------------------------------------------
    @abstractmethod
    def begin(self, t: float) -> None:
        """Start working at ``t`` (process up and workload on)."""

    @abstractmethod
    def halt(self, t: float) -> None:
        """Stop all activity at ``t``: cancel flows, void pending callbacks."""

    @abstractmethod
    def results(self, now: float, seconds: float) -> dict[str, float | int | None]:
        """Ground truth for the evaluation layer."""


# -- inference -----------------------------------------------------------------------------------


class ArrivalStream:
    """Requests of one inference tenant in time order: Poisson or a replayed trace.

    Each item: (arrival_s, prompt_tokens, output_tokens, cached_tokens).
    """

    _BLOCK = 4096

    def __init__(self, spec: TenantSpec, rng: np.random.Generator) -> None:
        self.spec = spec
        self.rng = rng
        self._t = 0.0
        self._times: list[float] = []
        self._prompts: list[int] = []
        self._outs: list[int] = []
        self._cached: list[int] = []
        self._i = 0
        self._trace_i = 0

    def retarget(self, spec: TenantSpec, t: float) -> None:
        """New parameters from ``t`` on (already generated requests after ``t`` are redrawn)."""
        self.spec = spec
        if spec.trace is None:
            self.skip_until(t)
            self._times, self._prompts, self._outs, self._cached = [], [], [], []
            self._i = 0
            self._t = t

    def _refill(self) -> bool:
        s = self.spec
        rng = self.rng
        if s.trace is not None:
            tr = s.trace
            lo, hi = self._trace_i, min(self._trace_i + self._BLOCK, len(tr))
            if lo >= hi:
                return False
            times = tr.times_s[lo:hi]
            prompts = tr.prompt_tokens[lo:hi]
            outs = tr.output_tokens[lo:hi]
            cached = tr.cached_tokens[lo:hi].copy()
            unknown = cached < 0
            hits = rng.random(hi - lo) < s.prefix_hit_rate
            cached[unknown] = np.where(hits, np.floor(prompts * s.prefix_fraction), 0)[unknown]
            self._trace_i = hi
        else:
            if s.rate_rps <= 0:
                return False
            n = self._BLOCK
            gaps = rng.exponential(1.0 / s.rate_rps, n)
            times = self._t + np.cumsum(gaps)
            self._t = float(times[-1])
            sig = s.token_sigma
            # lognormal around the mean (mean-preserving: mu = -sigma^2/2)
            pf = rng.lognormal(-sig * sig / 2, sig, n) if sig > 0 else np.ones(n)
            of = rng.lognormal(-sig * sig / 2, sig, n) if sig > 0 else np.ones(n)
            prompts = np.maximum(1, np.round(s.prompt_tokens * pf)).astype(np.int64)
            outs = np.maximum(1, np.round(s.output_tokens * of)).astype(np.int64)
            hits = rng.random(n) < s.prefix_hit_rate
            cached = np.where(hits, np.floor(prompts * s.prefix_fraction), 0).astype(np.int64)
        cached = np.minimum(cached, prompts - 1)
        self._times = times.tolist()
        self._prompts = prompts.tolist()
        self._outs = outs.tolist()
        self._cached = cached.tolist()
        self._i = 0
        return True

    def peek(self) -> float | None:
        if self._i >= len(self._times) and not self._refill():
            return None
        return self._times[self._i]

    def pop(self) -> tuple[float, int, int, int]:
        i = self._i
        self._i += 1
        return self._times[i], self._prompts[i], self._outs[i], self._cached[i]

    def skip_until(self, t: float) -> None:
        while True:
            nxt = self.peek()
            if nxt is None or nxt >= t:
                return
            self.pop()


class Inference(Tenant):
    """An LLM server with a FIFO queue and continuous batching.

    A prefill iteration takes the queued requests (up to ``max_batch_tokens`` new tokens and the
    free decode slots), loads their cached KV and input payloads over PCIe at the tenant's
    current share, then computes the prefill of their uncached tokens at its SM share:

        TTFT = host delay + queueing + (kv + input bytes) / PCIe share + prefill FLOPs / SM share

    Decode is memory-bound: a step reads the weights and every running sequence's KV at the
    tenant's HBM share. Decode tokens piggyback on prefill iterations (chunked prefill), which
    last longer than a pure decode step; at prefill-busy fraction rho the steps stretch to

        TPOT = step_s(batch, context, HBM share) · (1 + rho_prefill).
    """

    kind = "inference"

    def __init__(self, spec: TenantSpec, placement: Placement, env: Env,
                 rng: np.random.Generator) -> None:
        super().__init__(spec, placement, env, rng)
        self.arch: LlmArch = builtin(spec.model)
        self.cost = ModelCost.of(self.arch)
        self.stream = ArrivalStream(spec, rng)
        self.queue: deque[tuple[float, float, int, int, int]] = deque()  # ready, arrival, p, o, c
        self.busy = False
        self.batch: list[tuple[float, float, int, int, int]] = []
        self.batch_start = 0.0
        self.batch_frac = 0.0
        self.flow: Flow | None = None
        self.wake_at = INF
        #: running decodes: (end time, KV tokens reserved, mean context) min-heap, and the sums
        #: of both over the running sequences (admission uses the reservation, the decode step
        #: reads the mean context)
        self.decodes: list[tuple[float, int, int]] = []
        self.kv_tokens = 0
        self.ctx_tokens = 0
        self.kv_budget = self._kv_budget_tokens()
        self.requests = 0
        self.completed = 0
        self.window_ttft: list[float] = []
        self.window_tpot: list[float] = []
        self.ttft_t: list[float] = []
        self.ttft_s: list[float] = []
        self.tpot_s: list[float] = []
        self.rho_t = 0.0
        self.tx_bytes = 0.0

    def memory_need_bytes(self) -> int:
        s = self.spec
        ctx = s.prompt_tokens + s.output_tokens
        # weights plus room for a handful of sequences: what the engine needs to start
        return int(self.cost.weight_bytes + 4 * ctx * self.cost.kv_bytes_per_token)

    def _kv_budget_tokens(self) -> int:
        """KV tokens that fit next to the weights (what vLLM's block manager can hand out);
        sized when the engine starts, like vLLM's KV cache."""
        free = self.env_memory() - self.cost.weight_bytes
        return max(0, int(free // self.cost.kv_bytes_per_token))

    def env_memory(self) -> int:
        mem = self.env.placement_memory_bytes(self)
        if self.memory_limit_bytes is not None:
            mem = min(mem, self.memory_limit_bytes)
        # the engine reserves 90 % of what it sees (vLLM gpu_memory_utilization default)
        return int(mem * 0.9)

    # -- lifecycle ----------------------------------------------------------------------------
    def begin(self, t: float) -> None:
        self.epoch += 1
        self.kv_budget = self._kv_budget_tokens()
        self._kick(t)

    def set_active(self, t: float, active: bool) -> None:
        if active == self.active:
            return
        if not active:
            self._pull(t)  # what arrived before the workload stopped is still served
            while self.queue and self.queue[-1][1] > t:  # pulled ahead, never arrives
                self.queue.pop()
                self.requests -= 1
            self.active = False
            self.wake_at = INF
            return
        self.stream.skip_until(t)
        self.active = True
        if self.up:
            self._kick(t)

    def go_down(self, t: float) -> None:
        if self.up:
            self._pull(t)
        super().go_down(t)

    def halt(self, t: float) -> None:
        self.epoch += 1
        self.wake_at = INF
        if self.flow is not None:
            self.env.cancel_flow(self.flow)
            self.flow = None
        if self.busy:
            self.queue.extendleft(reversed(self.batch))
            self.batch = []
            self.busy = False

    def apply_spec(self, t: float, spec: TenantSpec) -> None:
        self._pull(t)
        if spec.trace is None:  # Poisson arrivals are redrawn from t: forget the look-ahead
            while self.queue and self.queue[-1][1] > t:
                self.queue.pop()
                self.requests -= 1
        super().apply_spec(t, spec)
        self.stream.retarget(spec, t)
        if self.working:
            self.wake_at = INF
            self._kick(t)

    # -- the server ---------------------------------------------------------------------------
    def _pull(self, t: float, ahead: bool = False) -> None:
        """Move every request that arrived by ``t`` into the queue; with ``ahead``, also the
        next one (an idle server then sleeps until it is ready instead of waking twice: at its
        arrival and again after its host-side delay)."""
        st = self.stream
        nxt = st.peek()
        if nxt is None or (nxt > t and not ahead):
            return
        q = self.queue
        last_ready = q[-1][0] if q else 0.0
        base, tail = self.env.host_delay(self)
        draw = self.exponential.next
        while True:
            if nxt > t:
                if not ahead:
                    break
                ahead = False
            arr, p, o, c = st.pop()
            ready = max(arr + base + tail * draw(), last_ready)
            last_ready = ready
            q.append((ready, arr, p, o, c))
            self.requests += 1
            nxt = st.peek()
            if nxt is None:
                break

    def _wake(self, t: float, epoch: int) -> None:
        if epoch != self.epoch or t != self.wake_at:
            return
        self.wake_at = INF
        self._kick(t)

    def _sleep_until(self, t: float) -> None:
        if t < self.wake_at:
            self.wake_at = t
            ep = self.epoch
            self.env.loop.schedule(t, lambda now: self._wake(now, ep))

    def _kick(self, t: float) -> None:
        if self.busy or not self.up:
            return
        if self.active:
            self._pull(t)
        q = self.queue
        if not q and self.active:
            self._pull(t, ahead=True)
        if not q:
            return
        if q[0][0] > t:
            self._sleep_until(q[0][0])
            return
        dec = self.decodes
        if dec and dec[0][0] <= t:
            self.drain_completed(t)
        s = self.spec
        slots = s.max_batch - len(dec)
        kv_free = self.kv_budget - self.kv_tokens
        head_kv = q[0][2] + q[0][3]
        if dec and (slots <= 0 or head_kv > kv_free):
            # admission waits for running sequences to finish and free their KV blocks
            self._sleep_until(dec[0][0])
            return
        kvb = self.cost.kv_bytes_per_token if s.kv_offload else 0
        batch: list[tuple[float, float, int, int, int]] = []
        tokens = 0
        nbytes = 0.0
        while q and q[0][0] <= t and len(batch) < max(1, slots):
            new = q[0][2] - (q[0][4] if s.kv_offload else 0)
            if batch and (tokens + new > s.max_batch_tokens or q[0][2] + q[0][3] > kv_free):
                break
            r = q.popleft()
            batch.append(r)
            tokens += new
            kv_free -= r[2] + r[3]
            nbytes += r[4] * kvb + s.input_bytes_per_request
        self.busy = True
        self.batch = batch
        self.batch_start = t
        if nbytes > 0:
            ep = self.epoch
            self.flow = self.env.pcie_flow(self, nbytes, s.streams,
                                           lambda now: self._loaded(now, ep))
        else:
            self._loaded(t, self.epoch)

    def _loaded(self, t: float, epoch: int) -> None:
        if epoch != self.epoch:
            return
        self.flow = None
        s = self.spec
        cal = self.env.calibration(self)
        frac = self.env.sm_fraction(self)
        cost = self.cost
        flops = 0.0
        for _, _, p, _, c in self.batch:
            cached = c if s.kv_offload else 0
            flops += cost.prefill_flops(p - cached, cached)
        # one iteration for the whole batch: the per-layer overhead is paid once
        dur = flops / (cal.flops_eff * frac) + cost.layers * self.env.layer_overhead_s
        # run-to-run jitter of kernel times (clocks, scheduling): lognormal, ~3 %
        dur *= math.exp(0.03 * self.normal.next())
        self.batch_frac = frac
        self.env.note_busy(self, dur, frac, 0.0)
        ep = self.epoch
        self.env.loop.schedule(t + dur, lambda now: self._prefilled(now, ep))

    def _prefilled(self, t: float, epoch: int) -> None:
        if epoch != self.epoch:
            return
        batch = self.batch
        self.batch = []
        self.busy = False
        # rho: exponentially weighted prefill-busy fraction
        busy = t - self.batch_start
        span = max(t - self.rho_t, busy, 1e-9)
        a = math.exp(-span / RHO_TAU_S)
        self.rho = a * self.rho + (1 - a) * min(1.0, busy / span)
        self.rho_t = t
        dec = self.decodes
        cost = self.cost
        cal = self.env.calibration(self)
        hbm = self.env.hbm_fraction(self)
        total_out = 0
        for r in batch:
            p, o = r[2], r[3]
            self.kv_tokens += p + o
            self.ctx_tokens += p + o // 2
            total_out += o
        n = len(dec) + len(batch)
        # decode_step_s() with the running sequences' summed context
        read = cost.weight_bytes + self.ctx_tokens * cost.kv_bytes_per_token
        step = read / (cal.hbm_eff_bps * hbm) + cost.layers * self.env.layer_overhead_s
        tpot = step * (1.0 + self.rho)
        win_ttft, win_tpot = self.window_ttft, self.window_tpot
        all_t, all_ttft, all_tpot = self.ttft_t, self.ttft_s, self.tpot_s
        push = heapq.heappush
        for _, arr, p, o, _ in batch:
            ttft = t - arr
            win_ttft.append(ttft)
            all_t.append(t)
            all_ttft.append(ttft)
            win_tpot.append(tpot)
            all_tpot.append(tpot)
            push(dec, (t + o * tpot, p + o, p + o // 2))
        self.tx_bytes += 4.0 * total_out  # generated token ids back to the host
        self.env.note_busy(self, total_out * tpot / n, self.batch_frac, total_out * read / n)
        self._kick(t)

    def drain_completed(self, now: float) -> int:
        dec = self.decodes
        while dec and dec[0][0] <= now:
            _, kv, ctx = heapq.heappop(dec)
            self.kv_tokens -= kv
            self.ctx_tokens -= ctx
            self.completed += 1
        return self.completed

    def take_window(self) -> tuple[list[float], list[float]]:
        w = (self.window_ttft, self.window_tpot)
        self.window_ttft, self.window_tpot = [], []
        return w

    def results(self, now: float, seconds: float) -> dict[str, float | int | None]:
        if self.working:
            self._pull(now)
        not_yet = sum(1 for r in self.queue if r[1] > now)
        self.drain_completed(now)
        ttft = np.asarray(self.ttft_s) * 1e3
        tpot = np.asarray(self.tpot_s) * 1e3

        def q(a: np.ndarray, p: float) -> float | None:
            return float(np.quantile(a, p, method="inverted_cdf")) if a.size else None

        return {
            "ttft_p50_ms": q(ttft, 0.5),
            "ttft_p99_ms": q(ttft, 0.99),
            "ttft_p999_ms": q(ttft, 0.999),
            "tpot_p99_ms": q(tpot, 0.99),
            "slo_violation_rate": self.violation_rate(),
            "requests": self.requests - not_yet,
            "completed": self.completed,
            "throughput_rps": self.completed / seconds if seconds > 0 else 0.0,
            "throughput": self.completed / seconds if seconds > 0 else 0.0,
            "downtime_s": self.downtime(now),
        }

    def window_p99_ms(self, seconds: int, metric: str = "ttft") -> list[float | None]:
        """p99 TTFT (or TPOT) of the requests whose first token came in each 1-s window."""
        out: list[float | None] = [None] * seconds
        if not self.ttft_s:
            return out
        t = np.asarray(self.ttft_t)
        v = np.asarray(self.ttft_s if metric == "ttft" else self.tpot_s) * 1e3
        sec = np.floor(t).astype(np.int64)
        order = np.lexsort((v, sec))
        sec, v = sec[order], v[order]
        starts = np.searchsorted(sec, np.arange(seconds + 1))
        for i in range(seconds):
            lo, hi = starts[i], starts[i + 1]
            if hi > lo:
                n = hi - lo
                out[i] = float(v[lo + max(1, math.ceil(0.99 * n)) - 1])
        return out

    def violation_rate(self) -> float | None:
        """Fraction of 1-s windows (with requests) whose p99 TTFT or p99 TPOT exceeded the
        tenant's SLO for it; None without an SLO or without requests."""
        slos = [(m, s) for m, s in (("ttft", self.spec.ttft_p99_ms),
                                    ("tpot", self.spec.tpot_p99_ms)) if s is not None]
        if not slos or not self.ttft_t:
            return None
        seconds = math.floor(max(self.ttft_t)) + 1
        bad = np.zeros(seconds, dtype=bool)
        seen = np.zeros(seconds, dtype=bool)
        for metric, slo in slos:
            for i, x in enumerate(self.window_p99_ms(seconds, metric)):
                if x is not None:
                    seen[i] = True
                    bad[i] |= x > slo
        return float(bad[seen].mean()) if seen.any() else None


# -- ETL -----------------------------------------------------------------------------------------


class Etl(Tenant):
    """Reads its NVMe device in chunks and copies each chunk to its GPU (double-buffered).

    Disk reads run at min(read_bps, io.max, the device's share); a chunk is copied over PCIe as
    soon as it is read, at the link share. Reading stalls while all ``buffers`` are full, so the
    ETL's PCIe rate can never exceed its disk rate: an io.max cap lowers its PCIe pressure.
    """

    kind = "etl"

    def __init__(self, spec: TenantSpec, placement: Placement, env: Env,
                 rng: np.random.Generator, device: str) -> None:
        super().__init__(spec, placement, env, rng)
        self.device = device
        self.read_flow: Flow | None = None
        self.copy_flow: Flow | None = None
        self.ready_chunks = 0
        self.copied_bytes = 0.0
        self.read_bytes_done = 0.0

    @property
    def uses_sm(self) -> bool:
        return False

    def disk_cap(self) -> float:
        cap = self.spec.read_bps
        lim = self.io_limits.get(self.device)
        if lim is not None:
            if lim.rbps is not None:
                cap = min(cap, float(lim.rbps))
            if lim.riops is not None:
                cap = min(cap, float(lim.riops) * IO_SIZE_BYTES)
        return cap

    def on_limit_change(self) -> None:
        if self.read_flow is not None:
            self.env.set_flow_cap(self.read_flow, self.disk_cap())

    def begin(self, t: float) -> None:
        self.epoch += 1
        self.ready_chunks = 0
        self._maybe_read(t)

    def halt(self, t: float) -> None:
        self.epoch += 1
        for f in (self.read_flow, self.copy_flow):
            if f is not None:
                self.env.cancel_flow(f)
        if self.read_flow is not None:
            self.read_bytes_done += self.read_flow.moved
        self.read_flow = None
        self.copy_flow = None
        self.ready_chunks = 0

    def apply_spec(self, t: float, spec: TenantSpec) -> None:
        super().apply_spec(t, spec)
        self.on_limit_change()

    def _maybe_read(self, t: float) -> None:
        if self.read_flow is not None or not self.working:
            return
        in_flight = self.ready_chunks + (1 if self.copy_flow is not None else 0)
        if in_flight >= self.spec.buffers:
            return
        ep = self.epoch
        self.read_flow = self.env.disk_flow(self, self.device, self.spec.chunk_bytes,
                                            self.disk_cap(), lambda now: self._read_done(now, ep))

    def _read_done(self, t: float, epoch: int) -> None:
        if epoch != self.epoch:
            return
        assert self.read_flow is not None
        self.read_bytes_done += self.read_flow.moved
        self.read_flow = None
        self.ready_chunks += 1
        self._maybe_copy(t)
        self._maybe_read(t)

    def _maybe_copy(self, t: float) -> None:
        if self.copy_flow is not None or self.ready_chunks == 0:
            return
        self.ready_chunks -= 1
        ep = self.epoch
        self.copy_flow = self.env.pcie_flow(self, self.spec.chunk_bytes, self.spec.streams,
                                            lambda now: self._copied(now, ep))

    def _copied(self, t: float, epoch: int) -> None:
        if epoch != self.epoch:
            return
        self.copy_flow = None
        self.copied_bytes += self.spec.chunk_bytes
        self._maybe_copy(t)
        self._maybe_read(t)

    def disk_bytes(self) -> float:
        return self.read_bytes_done + (self.read_flow.moved if self.read_flow is not None else 0.0)

    def results(self, now: float, seconds: float) -> dict[str, float | int | None]:
        bps = self.copied_bytes / seconds if seconds > 0 else 0.0
        return {"throughput": bps, "throughput_bytes_per_s": bps,
                "read_bytes": self.disk_bytes(), "downtime_s": self.downtime(now)}


# -- training ------------------------------------------------------------------------------------


class Training(Tenant):
    """Compute-bound steps; each step's batch is loaded over PCIe while it computes.

    step time = max(step_s / SM fraction of the GPU, batch_bytes / PCIe share). ``step_s`` is
    the step time alone on a whole GPU.
    """

    kind = "training"

    def __init__(self, spec: TenantSpec, placement: Placement, env: Env,
                 rng: np.random.Generator) -> None:
        super().__init__(spec, placement, env, rng)
        self.steps = 0
        self.loaded_bytes = 0.0
        self.flow: Flow | None = None
        self.pending = 0
        self.rho = 1.0

    def begin(self, t: float) -> None:
        self.epoch += 1
        self._step(t)

    def halt(self, t: float) -> None:
        self.epoch += 1
        if self.flow is not None:
            self.env.cancel_flow(self.flow)
            self.flow = None

    def _step(self, t: float) -> None:
        ep = self.epoch
        frac = self.env.sm_fraction(self)
        dur = self.spec.step_s / max(frac, 1e-6)
        dur *= math.exp(0.02 * self.normal.next())
        self.pending = 2 if self.spec.batch_bytes > 0 else 1
        hbm = self.env.hbm_fraction(self)
        cal = self.env.calibration(self)
        self.env.note_busy(self, dur, frac, hbm * cal.hbm_eff_bps * dur)
        self.env.loop.schedule(t + dur, lambda now: self._part_done(now, ep))
        if self.spec.batch_bytes > 0:
            self.flow = self.env.pcie_flow(self, self.spec.batch_bytes, self.spec.streams,
                                           lambda now: self._loaded(now, ep))

    def _loaded(self, t: float, epoch: int) -> None:
        if epoch != self.epoch:
            return
        self.flow = None
        self.loaded_bytes += self.spec.batch_bytes
        self._part_done(t, epoch)

    def _part_done(self, t: float, epoch: int) -> None:
        if epoch != self.epoch:
            return
        self.pending -= 1
        if self.pending == 0:
            self.steps += 1
            self._step(t)

    def results(self, now: float, seconds: float) -> dict[str, float | int | None]:
        return {
            "throughput": self.steps / seconds if seconds > 0 else 0.0,
            "throughput_bytes_per_s": self.loaded_bytes / seconds if seconds > 0 else 0.0,
            "steps": self.steps,
            "downtime_s": self.downtime(now),
        }
