"""Signed webhooks in the Standard Webhooks format (https://www.standardwebhooks.com): the
message toonq POSTs when a job with a `callback_url` finishes, its signature, where toonq may
send it, and the POST itself."""

from toonq.shared.webhooks.addresses import CallbackPolicy
from toonq.shared.webhooks.messages import WebhookMessage, message_for
from toonq.shared.webhooks.sending import DeliveryResult, post
from toonq.shared.webhooks.signing import sign, verify

__all__ = [
    "CallbackPolicy",
    "DeliveryResult",
    "WebhookMessage",
    "message_for",
    "post",
    "sign",
    "verify",
]
