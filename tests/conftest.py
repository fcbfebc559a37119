"""Shared pytest setup: bounded hypothesis profiles ('ci' is selected when CI is set)."""
import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# 'ci' with the examples drawn from --hypothesis-seed (derandomize would ignore the seed)
settings.register_profile("ci-seeded", settings.get_profile("ci"), derandomize=False)
settings.register_profile("dev", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
settings.load_profile(PROFILE)


def pytest_configure(config):
    """An explicit --hypothesis-seed=N (`.ci/run --repeat`) selects 'ci-seeded' under CI, so each
    seed really draws other examples; without it CI stays derandomized."""
    if PROFILE == "ci" and config.getoption("hypothesis_seed", default=None) is not None:
        settings.load_profile("ci-seeded")
