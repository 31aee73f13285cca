"""The tamper-evident audit trail: hash chain, signed checkpoints, receipts, analytics.

Pure code (no I/O but reading key files in :mod:`jitgate.audit.keys`); the
store appends and reads the events, the CLI and the API call in here.
"""

from jitgate.audit.keys import KeyFileError, SigningKey, TrustedKeys, VerifyKey

__all__ = ["KeyFileError", "SigningKey", "TrustedKeys", "VerifyKey"]
