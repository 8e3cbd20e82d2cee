import pytest
import structlog


@pytest.fixture(autouse=True)
def logs():
    """Log events as data (and off stdout, where the CLI's output is asserted on)."""
    with structlog.testing.capture_logs() as captured:
        yield captured
