"""Pipeline builders (config -> Ray Data graph) and Ray job entry points."""
