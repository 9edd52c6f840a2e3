"""Policy packs: load, validate, compile and version."""

from stage0.policy.compiled import CompiledBucket, CompiledPolicy
from stage0.policy.loader import PolicyError, compile_document, compile_text, load_policy
from stage0.policy.matching import normalize_name

__all__ = [
    "CompiledBucket",
    "CompiledPolicy",
    "PolicyError",
    "compile_document",
    "compile_text",
    "load_policy",
    "normalize_name",
]
