"""MPS control over its stdin protocol, against a fake control program written by the test."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from gpuguardd.host.mps import MpsControl
from gpuguardd.host.protocol import LeverError

FAKE = r'''#!{python}
import json, os, sys, time
pipe = os.environ.get("CUDA_MPS_PIPE_DIRECTORY")
if pipe is None or not os.path.isdir(pipe):
    print("Cannot find MPS control daemon process"); sys.exit(1)
state_file = os.path.join(pipe, "state.json")
state = json.load(open(state_file))
with open(os.path.join(pipe, "log"), "a") as log:
    log.write(json.dumps({{"env": sorted(os.environ)}}) + "\n")
if state.get("hang"):
    time.sleep(30)
for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        continue
    with open(os.path.join(pipe, "log"), "a") as log:
        log.write(json.dumps({{"cmd": cmd}}) + "\n")
    if cmd == ["get_server_list"]:
        print("\n".join(str(p) for p in state["servers"]))
    elif cmd[0] == "get_default_active_thread_percentage":
        print(f"{{state['default']:.1f}}")
    elif cmd[0] == "set_default_active_thread_percentage":
        if not state.get("ignore_set"):
            state["default"] = float(cmd[1])
        print(f"{{float(cmd[1]):.1f}}")
    elif cmd[0] == "get_active_thread_percentage":
        if cmd[1] not in state["pct"]:
            print("Invalid server pid"); continue
        print(f"{{state['pct'][cmd[1]]:.1f}}")
    elif cmd[0] == "set_active_thread_percentage":
        state["pct"][cmd[1]] = float(cmd[2])
        print(f"{{float(cmd[2]):.1f}}")
    else:
        print("Unknown command")
json.dump(state, open(state_file, "w"))
'''


@pytest.fixture
def mps(tmp_path: Path) -> tuple[MpsControl, Path]:
    exe = tmp_path / "nvidia-cuda-mps-control"
    exe.write_text(FAKE.format(python=sys.executable))
    exe.chmod(0o755)
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "state.json").write_text(json.dumps(
        {"servers": [4242], "default": 100.0, "pct": {"4242": 100.0}}))
    return MpsControl(str(exe), pipe_dir=pipe, timeout_s=5.0), pipe


def _commands(pipe: Path) -> list[list[str]]:
    lines = [json.loads(x) for x in (pipe / "log").read_text().splitlines()]
    return [x["cmd"] for x in lines if "cmd" in x]


def test_server_list_and_percentages(mps: tuple[MpsControl, Path]) -> None:
    ctl, pipe = mps
    assert ctl.server_list() == [4242]
    assert ctl.get_active_thread_percentage(4242) == 100.0
    assert ctl.set_active_thread_percentage(4242, 40) is True
    assert ctl.get_active_thread_percentage(4242) == 40.0
    assert ctl.set_active_thread_percentage(4242, 40) is False  # unchanged: no write
    assert _commands(pipe).count(["set_active_thread_percentage", "4242", "40"]) == 1
    assert ctl.set_default_active_thread_percentage(60) is True
    assert ctl.get_default_active_thread_percentage() == 60.0


def test_environment_is_cleared_but_has_the_pipe_directory(
    mps: tuple[MpsControl, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctl, pipe = mps
    monkeypatch.setenv("SECRET_TOKEN", "x")
    ctl.server_list()
    envs = [json.loads(x)["env"] for x in (pipe / "log").read_text().splitlines()
            if "env" in json.loads(x)]
    assert "CUDA_MPS_PIPE_DIRECTORY" in envs[-1] and "SECRET_TOKEN" not in envs[-1]


def test_errors(mps: tuple[MpsControl, Path], tmp_path: Path) -> None:
    ctl, pipe = mps
    with pytest.raises(LeverError, match="Invalid server pid"):
        ctl.get_active_thread_percentage(999)
    for bad in (0, 101, -5):
        with pytest.raises(LeverError) as e:
            ctl.set_active_thread_percentage(4242, bad)
        assert e.value.permanent
    state = json.loads((pipe / "state.json").read_text())
    state["ignore_set"] = True
    (pipe / "state.json").write_text(json.dumps(state))
    with pytest.raises(LeverError, match="reads back"):
        ctl.set_default_active_thread_percentage(30)
    no_daemon = MpsControl(ctl.binary, pipe_dir=tmp_path / "absent")
    with pytest.raises(LeverError, match="Cannot find"):
        no_daemon.server_list()
    assert not no_daemon.available()
    missing = MpsControl(str(tmp_path / "nope"))
    with pytest.raises(LeverError) as e2:
        missing.server_list()
    assert e2.value.permanent and not missing.available()


def test_timeout_is_temporary(mps: tuple[MpsControl, Path]) -> None:
    ctl, pipe = mps
    state = json.loads((pipe / "state.json").read_text())
    state["hang"] = True
    (pipe / "state.json").write_text(json.dumps(state))
    ctl.timeout_s = 0.5
    with pytest.raises(LeverError, match="timed out") as e:
        ctl.server_list()
    assert not e.value.permanent

