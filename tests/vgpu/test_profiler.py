from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuguardd.cli import main
from gpuguardd.host import profiler
from gpuguardd.vgpu.profile_data import parse_csv

from .stream_server import StreamServer

HERE = Path(__file__).resolve().parent


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    control = tmp_path / "share"
    control.write_text("100")
    srv = StreamServer(0, control)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", control
    srv.shutdown()
    srv.server_close()


def hook(control: Path) -> list[str]:
    code = ("import os, sys; open(sys.argv[1], 'w').write(os.environ['CUDA_DEVICE_SM_LIMIT'] + ' '"
            " + os.environ.get('CUDA_DEVICE_MEMORY_LIMIT', '-'))")
    return [sys.executable, "-c", code, str(control)]


@pytest.mark.parametrize("chat", [False, True])
def test_sweep_through_the_restart_hook(served: tuple[str, Path], chat: bool) -> None:
    url, control = served
    target = profiler.Target(url, "m", "A100-SXM4-80GB", chat=chat, prompt_tokens=16,
                             output_tokens=6, timeout_s=10)
    rows = profiler.run(target, profiler.Sweep([25, 100], [1, 3], rounds=1,
                                               memory_bytes=(2 << 30) + 1,
                                               restart_hook=hook(control)))
    assert control.read_text() == "100 2049m"  # the hook saw both variables
    assert [(r.share_pct, r.batch_size) for r in rows] == [(25, 1), (25, 3), (100, 1), (100, 3)]
    low, full = rows[0], rows[2]
    assert 60 <= low.ttft_ms <= 400 and 15 <= full.ttft_ms <= 120
    assert low.ttft_ms > 2.5 * full.ttft_ms
    assert low.tpot_ms > 2.5 * full.tpot_ms and 3 <= full.tpot_ms <= 40
    assert all(r.prompt_tokens == 16 and r.output_tokens == 6 for r in rows)


def test_server_mode_passes_the_share_in_the_environment(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = profiler.Target(f"http://127.0.0.1:{port}", "m", "A100-SXM4-80GB",
                             prompt_tokens=8, output_tokens=5, timeout_s=10)
    argv = [sys.executable, str(HERE / "stream_server.py"), "--port", str(port)]
    rows = profiler.run(target, profiler.Sweep([20, 100], [2], rounds=1, server_argv=argv,
                                               ready_timeout_s=20))
    assert rows[0].ttft_ms > 3 * rows[1].ttft_ms


def test_cli_profile_writes_the_csv(served: tuple[str, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    url, control = served
    out = tmp_path / "p.csv"
    code = main(["profile", "--url", url, "--model", "m", "--gpu", "A100-SXM4-80GB",
                 "--shares", "50,100", "--concurrency", "1,2", "--rounds", "1",
                 "--prompt-tokens", "8", "--output-tokens", "4",
                 "--restart-hook", json_argv(hook(control)), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = parse_csv(out.read_text())
    assert len(rows) == 4 and {r.share_pct for r in rows} == {50.0, 100.0}


def test_errors_are_reported_not_raised(served: tuple[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    url, control = served
    bad = profiler.Target(url, "fail", "g", timeout_s=5)
    with pytest.raises(profiler.ProfileError, match="HTTP 500"):
        profiler.stream_once(bad)
    failing_hook = [sys.executable, "-c", "import sys; sys.exit(3)"]
    with pytest.raises(profiler.ProfileError, match="exited 3"):
        profiler.run(profiler.Target(url, "m", "g"),
                     profiler.Sweep([50], [1], restart_hook=failing_hook))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    with pytest.raises(profiler.ProfileError, match="not ready"):
        profiler.wait_ready(profiler.Target(f"http://127.0.0.1:{dead}", "m", "g"), 0.5)
    code = main(["profile", "--url", url, "--model", "fail", "--gpu", "g", "--shares", "50",
                 "--concurrency", "1", "--restart-hook", json_argv(hook(control)),
                 "--out", str(tmp_path / "x.csv")])
    assert code == 1 and "HTTP 500" in capsys.readouterr().err


def json_argv(argv: list[str]) -> str:
    return json.dumps(argv)
