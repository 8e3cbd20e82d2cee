"""docs/: generated parts up to date, every exported metric documented."""

import re
from pathlib import Path

from gpuguardd import config

DOCS = Path(__file__).resolve().parents[2] / "docs"
MARKER = "<!-- generated: gpuguardd.config.reference() -->\n"


def test_configuration_reference_is_up_to_date():
    text = (DOCS / "configuration.md").read_text()
    assert MARKER in text
    generated = text[text.index(MARKER) + len(MARKER):]
    assert generated == "\n" + config.reference(), (
        "docs/configuration.md is out of date: run the command at its top")


def test_every_config_section_is_in_the_reference():
    ref = config.reference()
    for section in ("[daemon]", "[metrics]", "[push]", "[control]", "[policy]", "[[tenant]]",
                    "[tenant.slo]", "[tenant.latency]", "[tenant.hooks]"):
        assert f"### `{section}`" in ref, section


def test_metrics_reference_matches_the_exposition(sim_daemon):
    from tests.ops.conftest import http_get

    exposition = http_get(sim_daemon.url + "/metrics").decode()
    exported = set(re.findall(r"^# TYPE (gpuguard_\w+) ", exposition, re.M))
    documented = set(re.findall(r"^\| `(gpuguard_\w+)` \|", (DOCS / "metrics.md").read_text(),
                                re.M))
    assert exported == documented, (sorted(exported - documented), sorted(documented - exported))


def test_docs_link_to_files_that_exist():
    root = DOCS.parent
    for doc in DOCS.glob("*.md"):
        for ref in re.findall(r"`((?:docs|deploy|packaging|systemd|etc)/[\w./-]+)`",
                              doc.read_text()):
            assert (root / ref).exists(), f"{doc.name}: {ref}"


def test_ladder_has_a_diagram():
    text = (DOCS / "ladder.md").read_text()
    assert "```mermaid" in text and "stateDiagram" in text
