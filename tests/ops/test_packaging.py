"""Packaging: wheel and sdist (python -m build) and the Debian package (packaging/build-deb)."""

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_and_sdist(tmp_path):
    pytest.importorskip("build", reason="the build frontend is not installed (dev extra)")
    # --no-isolation: offline, with the venv's setuptools (no download of the build backend)
    r = subprocess.run([sys.executable, "-m", "build", "--no-isolation",
                        "--skip-dependency-check", "--outdir", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, check=False, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (whl,) = tmp_path.glob("gpuguardd-*-py3-none-any.whl")
    (sdist,) = tmp_path.glob("gpuguardd-*.tar.gz")
    names = set(zipfile.ZipFile(whl).namelist())
    for f in ("gpuguardd/cli/ctl.py", "gpuguardd/export/control.py", "gpuguardd/host/kubelet.py",
              "gpuguardd/py.typed", "gpuguardd/sim/scenarios/noisy-neighbor.toml"):
        assert f in names, f
    assert not [n for n in names if n.startswith("tests/")]
    dist_info = next(n for n in names if n.endswith(".dist-info/METADATA"))
    meta = zipfile.ZipFile(whl).read(dist_info).decode()
    assert "Provides-Extra: kubernetes" in meta
    assert "Requires-Dist: grpcio>=1.60; extra == \"kubernetes\"" in meta
    entry = zipfile.ZipFile(whl).read(dist_info.replace("METADATA", "entry_points.txt")).decode()
    assert "gpuguardd = gpuguardd.cli:main" in entry
    with tarfile.open(sdist) as t:
        assert any(n.endswith("/pyproject.toml") for n in t.getnames())


def _deb_tools_missing() -> str | None:
    needed = {"dpkg-buildpackage": shutil.which("dpkg-buildpackage"),
              "dpkg-deb": shutil.which("dpkg-deb"), "dh": shutil.which("dh"),
              "pybuild-plugin-pyproject":
                  Path("/usr/share/dh-python/dhpython/build/plugin_pyproject.py").exists() or None,
              "python3-all": Path("/usr/bin/python3").exists() or None}
    missing = [k for k, v in needed.items() if not v]
    return ", ".join(missing) if missing else None


@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    missing = _deb_tools_missing()
    if missing:
        pytest.skip(f"Debian build tools missing: {missing} (scripts/test installs them as root)")
    out = tmp_path_factory.mktemp("deb")
    r = subprocess.run([str(ROOT / "packaging" / "build-deb"), str(out)], capture_output=True,
                       text=True, check=False, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (path,) = out.glob("gpuguardd_*_all.deb")
    return path


def _dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True).stdout


def test_deb_contents(deb):
    listing = _dpkg_deb("-c", str(deb))
    paths = {line.split()[-1].removeprefix(".") for line in listing.splitlines()}
    modes = {line.split()[-1].removeprefix("."): line.split()[0] for line in listing.splitlines()}
    unit = next(p for p in paths if p.endswith("/systemd/system/gpuguardd.service"))
    assert unit in ("/lib/systemd/system/gpuguardd.service",
                    "/usr/lib/systemd/system/gpuguardd.service")
    for p in ("/etc/gpuguardd/gpuguardd.toml", "/usr/bin/gpuguardd",
              "/usr/lib/python3/dist-packages/gpuguardd/cli/ctl.py",
              "/usr/share/gpuguardd/grafana/gpuguardd.json",
              "/usr/share/gpuguardd/prometheus/rules.yml", "/var/lib/gpuguardd/"):
        assert p in paths, p
    assert modes["/var/lib/gpuguardd/"] == "drwx------"
    assert modes["/usr/bin/gpuguardd"] == "-rwxr-xr-x"
    assert modes["/etc/gpuguardd/gpuguardd.toml"] == "-rw-r--r--"  # not group/world-writable
    assert not [p for p in paths if "/tests/" in p]
    shipped = {Path(p).name.removesuffix(".gz") for p in paths
               if p.startswith("/usr/share/doc/gpuguardd/")}
    assert {f.name for f in (ROOT / "docs").glob("*.md")} | {"README.md"} <= shipped
    fields = _dpkg_deb("-f", str(deb), "Depends", "Architecture")
    assert "Architecture: all" in fields
    assert "python3-structlog (>= 23.1)" in fields and "python3-numpy (>= 1.26)" in fields


def test_deb_conffile_and_disabled_service(deb, tmp_path):
    subprocess.run(["dpkg-deb", "-e", str(deb), str(tmp_path / "ctl")], check=True)
    assert (tmp_path / "ctl" / "conffiles").read_text().split() == [
        "/etc/gpuguardd/gpuguardd.toml"]
    postinst = (tmp_path / "ctl" / "postinst").read_text()
    assert "deb-systemd-helper" in postinst
    assert "deb-systemd-invoke" not in postinst and "deb-systemd-helper enable" in postinst
    # enable only re-creates symlinks of an installation that was enabled before
    assert "was-enabled 'gpuguardd.service'" in postinst


def test_installed_unit_verifies(deb, tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed")
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    (unit,) = [p for p in root.rglob("gpuguardd.service")]
    exe = root / "usr" / "bin" / "gpuguardd"
    assert exe.is_file() and exe.stat().st_mode & 0o111
    # verify checks that ExecStart exists: point it at the packaged executable
    text = unit.read_text()
    assert "ExecStart=/usr/bin/gpuguardd run --config /etc/gpuguardd/gpuguardd.toml" in text
    copy = tmp_path / "gpuguardd.service"
    copy.write_text(text.replace("ExecStart=/usr/bin/gpuguardd", f"ExecStart={exe}"))
    r = subprocess.run([tool, "verify", str(copy)], capture_output=True, text=True, check=False)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines() if "gpuguardd.service" in ln]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr
    assert text == (ROOT / "systemd" / "gpuguardd.service").read_text()
