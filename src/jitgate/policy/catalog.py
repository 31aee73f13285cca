"""The default catalog: the policy jitgate applies when given none.

The catalog is a policy file like any other (``catalog/default.yaml``, shipped
as package data) so teams can copy and adapt it; see that file's comments.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from jitgate.policy.engine import Policy
from jitgate.policy.loader import load_policy_text

#: The package-relative name of the default catalog file.
DEFAULT_CATALOG = "catalog/default.yaml"


def default_catalog_text() -> str:
    return resources.files("jitgate.policy").joinpath(DEFAULT_CATALOG).read_text(encoding="utf-8")


@cache
def default_policy() -> Policy:
    """The compiled default catalog (compiled once per process)."""
    return load_policy_text(default_catalog_text(), source=f"jitgate/policy/{DEFAULT_CATALOG}")
