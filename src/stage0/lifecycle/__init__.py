"""Operators' policy lifecycle: test a pack, replay it over recorded decisions, report on its
shadow rules.

These run the engine on a pack (``suites``: test cases; ``replay``: the decision log of the
store), so they sit above both ``engine`` and ``store``; ``policy`` and ``store`` know nothing of
them. The ``stage0 policy test``, ``replay`` and ``shadow-report`` commands and the console's
shadow page use them.
"""
