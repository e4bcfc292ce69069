"""The worker runtime (workers.runtime) configured on the test's database for one test."""

from collections.abc import Callable, Iterator

import pytest

from config import Settings
from pipeline.db.migrate import upgrade_database
from workers import chains, runtime

# A worker process imports its task modules, and with them workers.chains, which registers
# the event relay's follow-up (runtime.session_factory refuses to run without one); the
# tasks under test here need it too.
assert chains.after_events


@pytest.fixture
def configure_runtime() -> Iterator[Callable[[Settings], Settings]]:
    """Call with the settings the tasks under test should run on; undone after the test."""

    def configure(settings: Settings) -> Settings:
        upgrade_database(settings.database_url)
        runtime.configure(settings)
        return settings

    try:
        yield configure
    finally:
        runtime.configure(None)
