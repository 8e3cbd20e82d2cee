"""Latency from a serving engine's Prometheus ``/metrics`` (vLLM, SGLang).

Each scrape turns the increase of the TTFT and inter-token histograms since the previous scrape
into quantile sketches (``Sketch.add_bucket`` per bucket delta). Both metric generations are
read (vLLM ``inter_token_latency_seconds``, older ``time_per_output_token_seconds``; SGLang the
same pair). Series that differ only in labels we were not asked to match (e.g. vLLM's ``engine``)
are added together.

Robustness rules - a broken source never raises out of :meth:`PromScraper.scrape`:

* fetch errors, timeouts, unparsable text, a missing histogram  -> ``LatencyWindow(ok=False)``
  (the window is *unknown*, not empty) and ``last_error`` says why;
* a counter that went down (engine restart) -> the new values count from zero, i.e. the whole
  current histogram is this window's delta; a changed ``_created`` timestamp means the same, and
  catches restarts that already climbed past the old count. Without ``_created`` such a restart
  is indistinguishable from traffic, which the first rule bounds to one window;
* the first successful scrape only sets the baseline (an empty, known window).

Only bucket counts are used: SGLang's inter-token histogram adds a whole interval to ``_sum``
but one count to a bucket, so ``_sum``/``_count`` means would be wrong there.
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from gpuguardd.model.sketch import Sketch
from gpuguardd.model.snapshot import LatencyWindow

MAX_BODY_BYTES = 16 * 1024 * 1024

#: metric family names per flavor and kind, preferred generation first
METRICS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "vllm": {
        "ttft": ("vllm:time_to_first_token_seconds",),
        "tpot": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    },
    "sglang": {
        "ttft": ("sglang:time_to_first_token_seconds",),
        "tpot": ("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds"),
    },
}

Fetch = Callable[[str, float], str]


def http_fetch(url: str, timeout_s: float) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"only http(s) metrics URLs are scraped, not {url!r}")
    req = urllib.request.Request(url, headers={"Accept": "text/plain; version=0.0.4"})  # noqa: S310
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - scheme checked
        body: bytes = resp.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"metrics body larger than {MAX_BODY_BYTES} bytes")
    return body.decode("utf-8", errors="replace")


@dataclass(slots=True)
class _Hist:
    """One histogram summed over the matching series: cumulative counts per upper bound."""

    buckets: dict[float, float]
    created: frozenset[float]


def _histograms(text: str, names: Iterable[str], labels: Mapping[str, str]) -> dict[str, _Hist]:
    wanted = set(names)
    buckets: dict[str, dict[float, float]] = {}
    created: dict[str, set[float]] = {}
    for fam in text_string_to_metric_families(text):
        # the text format puts ``<name>_created`` in a gauge family of its own
        base = fam.name.removesuffix("_created")
        if fam.name not in wanted and base not in wanted:
            continue
        name = fam.name if fam.name in wanted else base
        for s in fam.samples:
            if any(s.labels.get(k) != v for k, v in labels.items()):
                continue
            if s.name.endswith("_bucket") and "le" in s.labels and name == fam.name:
                le = float(s.labels["le"])
                if math.isnan(le) or not math.isfinite(s.value) or s.value < 0:
                    continue
                b = buckets.setdefault(name, {})
                b[le] = b.get(le, 0.0) + s.value
            elif s.name.endswith("_created") and math.isfinite(s.value):
                created.setdefault(name, set()).add(s.value)
    return {n: _Hist(b, frozenset(created.get(n, ()))) for n, b in buckets.items() if b}


def _is_reset(prev: _Hist, cur: _Hist) -> bool:
    if prev.created and cur.created and prev.created != cur.created:
        return True
    if set(prev.buckets) - set(cur.buckets):
        return True
    return any(cur.buckets.get(le, 0.0) < n for le, n in prev.buckets.items())


def bucket_delta_sketch(prev: _Hist | None, cur: _Hist) -> Sketch:
    """Samples observed between ``prev`` and ``cur`` (all of ``cur`` after a reset)."""
    base = {} if prev is None or _is_reset(prev, cur) else prev.buckets
    sketch = Sketch()
    lower = 0.0
    below = 0.0
    for le in sorted(cur.buckets):
        cum = cur.buckets[le] - base.get(le, 0.0)
        n = round(cum - below)
        if n > 0:
            sketch.add_bucket(lower, le, n)
        below = max(below, cum)
        lower = le
    return sketch


@dataclass(frozen=True, slots=True)
class ScrapeResult:
    window: LatencyWindow
    #: cumulative requests seen (TTFT observations), monotonic across engine restarts
    requests_total: float | None
    error: str | None = None


class PromScraper:
    """Scrapes one tenant's serving engine; keep one instance per tenant."""

    def __init__(
        self,
        url: str,
        flavor: str = "vllm",
        labels: Mapping[str, str] | None = None,
        timeout_s: float = 1.0,
        fetch: Fetch = http_fetch,
    ) -> None:
        if flavor not in METRICS:
            raise ValueError(f"unknown metrics flavor {flavor!r}")
        self.url = url
        self.names = METRICS[flavor]
        self.labels = dict(labels or {})
        self.timeout_s = timeout_s
        self._fetch = fetch
        self._prev: dict[str, _Hist] = {}
        self._requests: float = 0.0
        self._have_baseline = False
        self.last_error: str | None = None

    def scrape(self) -> ScrapeResult:
        try:
            text = self._fetch(self.url, self.timeout_s)
        except (OSError, ValueError, urllib.error.URLError) as e:
            return self._fail(f"fetch {self.url}: {e}")
        return self.update(text)

    def update(self, text: str) -> ScrapeResult:
        """Account one exposition text (the part of :meth:`scrape` after the fetch)."""
        all_names = [n for names in self.names.values() for n in names]
        try:
            hists = _histograms(text, all_names, self.labels)
        except Exception as e:  # the parser raises many kinds of error on garbage
            return self._fail(f"parse {self.url}: {type(e).__name__}: {e}")
        chosen: dict[str, _Hist] = {}
        for kind, names in self.names.items():
            name = next((n for n in names if n in hists), None)
            if name is None:
                if kind == "ttft":
                    return self._fail(f"{self.url}: no {names[0]} histogram matching "
                                      f"{self.labels or 'any labels'}")
                continue
            chosen[name] = hists[name]
        sketches: dict[str, Sketch] = {}
        for kind, names in self.names.items():
            name = next((n for n in names if n in chosen), None)
            if name is None:
                continue
            prev = self._prev.get(name)
            sk = bucket_delta_sketch(prev, chosen[name])
            sketches[kind] = sk if (self._have_baseline or prev is not None) else Sketch()
        self._prev = chosen
        if self._have_baseline:
            self._requests += sketches["ttft"].count
        self._have_baseline = True
        self.last_error = None
        return ScrapeResult(
            LatencyWindow(ttft=sketches["ttft"].frozen(),
                          tpot=sketches.get("tpot", Sketch()).frozen(), ok=True),
            self._requests,
        )

    def _fail(self, why: str) -> ScrapeResult:
        self.last_error = why
        return ScrapeResult(LatencyWindow(ok=False), None, why)
