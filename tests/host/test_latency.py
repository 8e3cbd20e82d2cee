"""vLLM/SGLang /metrics scraping: both metric generations, resets, garbage, timeouts."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator, Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuguardd.host.latency import PromScraper

VLLM_TTFT_LE = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
VLLM_ITL_LE = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
               10.0, 20.0, 40.0, 80.0)
SGLANG_TTFT_LE = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400)


def hist(name: str, les: Sequence[float], per_bucket: Mapping[float, int], labels: str,
         created: float | None = 1_700_000_000.0) -> str:
    """One-series Prometheus text histogram as prometheus_client renders it."""
    return hists(name, les, [(labels, per_bucket)], created)


def hists(name: str, les: Sequence[float], series: Sequence[tuple[str, Mapping[float, int]]],
          created: float | None = 1_700_000_000.0) -> str:
    """Several label sets; ``_created`` follows as a gauge family of its own (text format)."""
    lines = [f"# HELP {name} Histogram of something.", f"# TYPE {name} histogram"]
    for labels, per_bucket in series:
        cum = 0
        total = 0.0
        for le in les:
            cum += per_bucket.get(le, 0)
            total += per_bucket.get(le, 0) * le
            lines.append(f'{name}_bucket{{{labels},le="{float(le)}"}} {float(cum)}')
        cum += per_bucket.get(float("inf"), 0)
        lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {float(cum)}')
        lines.append(f"{name}_count{{{labels}}} {float(cum)}")
        lines.append(f"{name}_sum{{{labels}}} {total}")
    if created is not None:
        lines += [f"# HELP {name}_created Histogram of something.", f"# TYPE {name}_created gauge"]
        lines += [f"{name}_created{{{labels}}} {created}" for labels, _ in series]
    return "\n".join(lines) + "\n"


VLLM_LABELS = 'engine="0",model_name="meta-llama/Llama-3.1-8B"'


def vllm_text(ttft: Mapping[float, int], itl: Mapping[float, int], *, old: bool = False,
              created: float | None = 1_700_000_000.0) -> str:
    itl_name = "vllm:time_per_output_token_seconds" if old else "vllm:inter_token_latency_seconds"
    return (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f"vllm:num_requests_running{{{VLLM_LABELS}}} 3.0\n"
        + hist("vllm:time_to_first_token_seconds", VLLM_TTFT_LE, ttft, VLLM_LABELS, created)
        + hist(itl_name, VLLM_ITL_LE, itl, VLLM_LABELS, created)
    )


class Feed:
    def __init__(self) -> None:
        self.text = ""
        self.error: Exception | None = None

    def __call__(self, url: str, timeout_s: float) -> str:
        if self.error is not None:
            raise self.error
        return self.text


def test_vllm_bucket_deltas_become_window_quantiles() -> None:
    feed = Feed()
    s = PromScraper("http://x/metrics", "vllm", {"model_name": "meta-llama/Llama-3.1-8B"},
                    fetch=feed)
    feed.text = vllm_text({0.02: 5}, {0.025: 10})
    first = s.scrape()
    assert first.window.ok and first.window.ttft.count == 0  # baseline only
    feed.text = vllm_text({0.02: 5 + 98, 0.25: 2}, {0.025: 10 + 40, 0.1: 1})
    r = s.scrape()
    assert r.window.ok
    assert r.window.ttft.count == 100 and r.window.tpot.count == 41
    p50, p99 = r.window.ttft.quantile(0.5), r.window.ttft.quantile(0.99)
    assert p50 is not None and 0.01 < p50 <= 0.02  # inside the (0.01, 0.02] bucket
    assert p99 is not None and 0.1 < p99 <= 0.25
    assert r.requests_total == 100


def test_older_metric_names_are_read() -> None:
    feed = Feed()
    s = PromScraper("http://x/metrics", "vllm", fetch=feed)
    feed.text = vllm_text({}, {}, old=True)
    s.scrape()
    feed.text = vllm_text({0.1: 4}, {0.05: 7}, old=True)
    r = s.scrape()
    assert r.window.ttft.count == 4 and r.window.tpot.count == 7


def test_series_of_several_engines_are_summed_and_labels_filter() -> None:
    feed = Feed()
    s = PromScraper("http://x/metrics", "vllm", {"model_name": "m"}, fetch=feed)

    def text(n0: int, n1: int, other: int) -> str:
        return hists("vllm:time_to_first_token_seconds", VLLM_TTFT_LE, [
            ('engine="0",model_name="m"', {0.04: n0}),
            ('engine="1",model_name="m"', {0.04: n1}),
            ('engine="0",model_name="other"', {5.0: other}),
        ])

    feed.text = text(1, 1, 1)
    s.scrape()
    feed.text = text(4, 6, 100)
    r = s.scrape()
    assert r.window.ttft.count == 8
    assert r.window.ttft.quantile(1.0) is not None
    assert (r.window.ttft.quantile(1.0) or 0) <= 0.04


def test_sglang_current_and_old_names() -> None:
    feed = Feed()
    s = PromScraper("http://x/metrics", "sglang", {"model_name": "qwen"}, fetch=feed)
    lab = 'model_name="qwen"'

    def text(n: int, itl: int) -> str:
        return (hist("sglang:time_to_first_token_seconds", SGLANG_TTFT_LE, {0.4: n}, lab)
                + hist("sglang:time_per_output_token_seconds", (0.01, 0.1, 1.0), {0.1: itl}, lab))

    feed.text = text(1, 1)
    s.scrape()
    feed.text = text(11, 21)
    r = s.scrape()
    assert r.window.ttft.count == 10 and r.window.tpot.count == 20
    q = r.window.ttft.quantile(0.99)
    assert q is not None and 0.2 < q <= 0.4


def test_counter_reset_counts_from_zero() -> None:
    feed = Feed()
    s = PromScraper("http://x/metrics", "vllm", fetch=feed)
    feed.text = vllm_text({0.02: 500}, {}, created=None)
    s.scrape()
    feed.text = vllm_text({0.5: 3}, {}, created=None)  # restarted: counts went down
    r = s.scrape()
    assert r.window.ok and r.window.ttft.count == 3
    assert (r.window.ttft.quantile(0.5) or 0) > 0.25


def test_restart_detected_by_created_even_when_counts_grew() -> None:
    feed = Feed()
    s = PromScraper("http://x/metrics", "vllm", fetch=feed)
    feed.text = vllm_text({0.02: 5}, {}, created=100.0)
    s.scrape()
    feed.text = vllm_text({0.02: 9}, {}, created=200.0)
    assert s.scrape().window.ttft.count == 9
    assert s.scrape().window.ttft.count == 0  # and the next window is a plain delta again


@pytest.mark.parametrize(
    "text",
    ["", "garbage {{{ \x00", "vllm:time_to_first_token_seconds_bucket{le=\"x\"} 1\n",
     "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 1\n"],
)
def test_garbage_or_missing_histogram_is_unknown(text: str) -> None:
    feed = Feed()
    feed.text = text
    r = PromScraper("http://x/metrics", "vllm", fetch=feed).scrape()
    assert not r.window.ok and r.error


def test_fetch_error_marks_unknown_then_recovers() -> None:
    feed = Feed()
    s = PromScraper("http://x/metrics", "vllm", fetch=feed)
    feed.text = vllm_text({0.02: 1}, {})
    s.scrape()
    feed.error = TimeoutError("timed out")
    r = s.scrape()
    assert not r.window.ok and "timed out" in (s.last_error or "")
    feed.error = None
    feed.text = vllm_text({0.02: 3}, {})
    r = s.scrape()
    assert r.window.ok and r.window.ttft.count == 2 and s.last_error is None


class _Slow(http.server.BaseHTTPRequestHandler):
    body = b""
    delay = threading.Event()

    def do_GET(self) -> None:
        if self.path == "/slow":
            self.delay.wait(2.0)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Slow.body = vllm_text({0.02: 1}, {0.01: 1}).encode()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    _Slow.delay.set()
    srv.shutdown()
    srv.server_close()
    _Slow.delay.clear()


def test_real_http_scrape_and_timeout(server: str) -> None:
    ok = PromScraper(f"{server}/metrics", "vllm", timeout_s=2.0).scrape()
    assert ok.window.ok
    slow = PromScraper(f"{server}/slow", "vllm", timeout_s=0.2).scrape()
    assert not slow.window.ok and slow.error
    refused = PromScraper("http://127.0.0.1:1/metrics", "vllm", timeout_s=0.5).scrape()
    assert not refused.window.ok
    assert not PromScraper("file:///etc/passwd", "vllm").scrape().window.ok


_tokens = st.sampled_from([
    "vllm:time_to_first_token_seconds_bucket", "vllm:time_to_first_token_seconds_count",
    "# TYPE vllm:time_to_first_token_seconds histogram", "{", "}", 'le="', '"', "+Inf", "NaN",
    "-1", "1e309", "0.5", "\n", " ", ",", "=", "model_name", "# HELP", "_created", "\\", "\x00",
])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=200), st.lists(_tokens, max_size=60).map("".join)))
def test_scrape_never_raises_on_garbage(text: str) -> None:
    feed = Feed()
    s = PromScraper("http://x/metrics", "vllm", fetch=feed)
    feed.text = vllm_text({0.02: 1}, {})
    s.scrape()
    feed.text = text
    r = s.scrape()
    assert r.window.ok or r.error
    if r.window.ok:
        assert r.window.ttft.count >= 0
