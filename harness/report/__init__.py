"""Reports built from the results store (`harness.store.load`)."""
