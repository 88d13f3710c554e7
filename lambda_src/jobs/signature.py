"""Webhook signatures: HMAC-SHA256 over "<t>.<body>" with the secret in Secrets Manager.

Every webhook POST carries:

    X-ComfyUI-EKS-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">
    X-ComfyUI-EKS-Event:     job.succeeded | job.failed | job.cancelled
    X-ComfyUI-EKS-Delivery:  <uuid>, the same on every retry of one event: deduplicate on it

The timestamp is inside the signed text, so a captured request cannot be replayed later with
a new one; a fresh signature (new t) is made for every try. Deliveries are at least once.

Receiver's verification recipe (standard library only; verify the raw bytes as received,
before any JSON parsing, and read the secret from the same Secrets Manager secret):

    # --- recipe start ---
    import hashlib
    import hmac
    import time


    def verify(secret: str, body: bytes, header: str, tolerance: int = 300) -> bool:
        fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
        try:
            timestamp = int(fields["t"])
        except (KeyError, ValueError):
            return False
        if abs(time.time() - timestamp) > tolerance:
            return False  # too old (or from the future): a replay
        signed = str(timestamp).encode() + b"." + body
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, fields.get("v1", ""))
    # --- recipe end ---

e.g. in Flask: `verify(secret, request.get_data(), request.headers["X-ComfyUI-EKS-Signature"])`;
answer 2xx quickly (within 5 s) and do the work afterwards.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-ComfyUI-EKS-Signature"
EVENT_HEADER = "X-ComfyUI-EKS-Event"
DELIVERY_HEADER = "X-ComfyUI-EKS-Delivery"
DEFAULT_TOLERANCE_SECONDS = 300


def signature(secret: bytes, body: bytes, timestamp: int) -> str:
    """Hex HMAC-SHA256 of "<timestamp>.<body>"."""
    return hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def header_value(secret: bytes, body: bytes, timestamp: int) -> str:
    return f"t={timestamp},v1={signature(secret, body, timestamp)}"


def verify(secret: bytes, body: bytes, header: str, now: int, tolerance: int = DEFAULT_TOLERANCE_SECONDS) -> bool:
    """The recipe above, with the clock passed in (tests, and Python receivers may import it)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, body, timestamp), fields.get("v1", ""))
