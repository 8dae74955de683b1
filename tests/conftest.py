"""Shared test settings: hypothesis runs derandomised, so the suite is deterministic run to run."""

from hypothesis import settings

settings.register_profile("byzrsa", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("byzrsa")
