"""Stage0: pre-execution authorization for AI agents.

The package is laid out as the pipeline a decision travels through:
``contract`` (wire models) -> ``policy`` (load, validate, compile) -> ``engine``
(evaluate, combine) -> ``cli``. Dependencies point one way.
"""

__version__ = "0.1.0"
