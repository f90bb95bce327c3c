"""Pipeline stages: small Ray-agnostic classes (declared resources, ``setup()``, per-batch work)."""
