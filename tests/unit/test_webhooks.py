"""Webhook signatures, and where a callback may go."""

from __future__ import annotations

import pytest

from toonq.shared.errors import ConfigurationError, InvalidCallbackURLError
from toonq.shared.settings import Settings
from toonq.shared.webhooks import CallbackPolicy, sign, verify

# The Standard Webhooks specification's own example: a receiver's library must accept ours.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signatures_reproduce_the_specifications_example() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_verify_accepts_the_signature_among_others_and_refuses_a_changed_body() -> None:
    header = f"v1,bm9wZQ== {SPEC_SIGNATURE}"

    assert verify(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY, header)
    assert not verify(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY + b" ", header)
    assert not verify(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP + 1, SPEC_BODY, header)


@pytest.mark.parametrize("secret", ["not-base64!", "whsec_", "whsec_%%%"])
def test_a_secret_that_is_no_base64_key_is_a_configuration_error(secret: str) -> None:
    with pytest.raises(ConfigurationError, match="TOONQ_WEBHOOK_SECRET must be whsec_"):
        Settings.from_env({"TOONQ_WEBHOOK_SECRET": secret})


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/hook", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("https:///hook", "names a host"),
        ("https://user:pw@example.com/hook", "no user name or password"),
        ("https://example.com/a b", "spaces or control characters"),
        ("http://127.0.0.1:8080/hook", "127.0.0.1, an address inside the network"),
        ("http://localhost/hook", "an address inside the network"),
        ("http://10.1.2.3/hook", "10.1.2.3, an address inside the network"),
        ("http://192.168.0.7/hook", "inside the network"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://[::1]/hook", "::1, an address inside the network"),
        ("http://[::ffff:127.0.0.1]/hook", "127.0.0.1"),
        ("http://[fd00:ec2::254]/hook", "inside the network"),
        ("http://100.100.100.200/hook", "inside the network"),
        ("http://0.0.0.0/hook", "inside the network"),
        ("https://no-such-host.invalid/hook", "does not resolve"),
    ],
)
def test_callbacks_inside_the_network_or_not_http_are_refused(url: str, why: str) -> None:
    with pytest.raises(InvalidCallbackURLError, match=why) as refused:
        CallbackPolicy().check(url)
    assert refused.value.code == "invalid_callback_url"


@pytest.mark.parametrize(
    ("allowed", "url"),
    [
        ({"127.0.0.1"}, "http://127.0.0.1:8080/hook"),
        ({"127.0.0.1:8080"}, "http://127.0.0.1:8080/hook"),
        ({"localhost"}, "http://LOCALHOST/hook"),
        ({"[::1]:9000"}, "http://[::1]:9000/hook"),
    ],
)
def test_an_allowed_host_may_be_called_whatever_its_address(allowed: set[str], url: str) -> None:
    CallbackPolicy.of(allowed).check(url)


def test_an_allowed_host_port_allows_that_port_only() -> None:
    with pytest.raises(InvalidCallbackURLError):
        CallbackPolicy.of({"127.0.0.1:8080"}).check("http://127.0.0.1:8081/hook")


def test_a_public_address_needs_no_allowing() -> None:
    target = CallbackPolicy().check("https://93.184.215.14/hooks/toonq?tenant=7")
    assert (target.scheme, target.host, target.port, target.path) == (
        "https",
        "93.184.215.14",
        443,
        "/hooks/toonq?tenant=7",
    )
