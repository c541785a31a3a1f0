"""The one definition of the version of both distributions (dopr and dopr-bench; the bench links this file)."""

__version__ = "0.2.0"
