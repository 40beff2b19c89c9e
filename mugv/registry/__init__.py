"""The model registry's policy: gated promotion of evaluated versions to `champion`, rollback, releases as pyfunc models."""
