"""The ``stage0`` command line."""
