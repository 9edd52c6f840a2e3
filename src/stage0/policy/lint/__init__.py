"""The parts of ``stage0 policy validate`` (:mod:`stage0.policy.validate` runs them).

``codes``: the lint codes and the located issue; ``document``: the composed YAML and the
findings placed in it; ``schema``: schema errors as findings; ``rules``, ``windows``: the lint
checks the loader does not make; ``hints``: "did you mean" and friends.
"""

from stage0.policy.lint.codes import LINT_CODES, Located, Location

__all__ = ["LINT_CODES", "Located", "Location"]
