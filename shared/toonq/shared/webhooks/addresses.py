"""Where a callback may go: http or https, and never inside the network (loopback, private,
link-local, metadata and other non-global addresses) unless an operator allowed its host. The
URL is checked when a job is submitted, and the address it resolves to again before each POST,
so that a name re-pointed at an inner address later is refused too."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, TypeAlias
from urllib.parse import SplitResult, urlsplit

from toonq.shared.errors import InvalidCallbackURLError

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
MAX_CALLBACK_URL_LENGTH: Final = 2048

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Target:
    """A callback URL taken apart: what to connect to, and what to say to it."""

    scheme: str
    host: str  # lowercase, without IPv6 brackets
    port: int
    path: str  # with the query


@dataclass(frozen=True)
class CallbackPolicy:
    """`allowed_hosts`: `host` (any port) or `host:port` entries, lowercase (the setting
    `TOONQ_WEBHOOK_ALLOWED_HOSTS`)."""

    allowed_hosts: frozenset[str] = frozenset()

    @classmethod
    def of(cls, allowed_hosts: Iterable[str]) -> CallbackPolicy:
        return cls(frozenset(host.lower() for host in allowed_hosts))

    def check(self, url: str) -> Target:
        """The target of `url` if toonq may call it; InvalidCallbackURLError (saying why)
        otherwise. Resolves the host name."""
        target = parse(url)
        self.addresses(target)
        return target

    def addresses(self, target: Target) -> list[Address]:
        """The addresses `target`'s host resolves to, each checked; InvalidCallbackURLError
        when it resolves to none or to one toonq may not call."""
        try:
            found = socket.getaddrinfo(target.host, target.port, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError) as exc:
            raise InvalidCallbackURLError(
                f"callback host {target.host!r} does not resolve: {exc}"
            ) from None
        addresses = list(dict.fromkeys(_address(str(info[4][0])) for info in found))
        if not self._allowed(target):
            for address in addresses:
                if not address.is_global:
                    raise InvalidCallbackURLError(
                        f"callback host {target.host!r} is {address}, an address inside the "
                        "network (loopback, private, link-local or metadata); list the host "
                        "in TOONQ_WEBHOOK_ALLOWED_HOSTS to allow it"
                    )
        return addresses

    def _allowed(self, target: Target) -> bool:
        host = f"[{target.host}]" if ":" in target.host else target.host
        return bool({target.host, host, f"{host}:{target.port}"} & self.allowed_hosts)


def parse(url: str) -> Target:
    """`url` taken apart; InvalidCallbackURLError unless it is an absolute http(s) URL."""
    if len(url) > MAX_CALLBACK_URL_LENGTH or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise InvalidCallbackURLError(
            f"a callback URL has at most {MAX_CALLBACK_URL_LENGTH} characters, none of them "
            "spaces or control characters"
        )
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidCallbackURLError(f"not a URL: {url!r} ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise InvalidCallbackURLError(f"a callback URL is http:// or https://, not {url!r}")
    if not parts.hostname:
        raise InvalidCallbackURLError(f"a callback URL names a host: {url!r}")
    if parts.username is not None or parts.password is not None:
        raise InvalidCallbackURLError("a callback URL carries no user name or password")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme], path)


def _address(text: str) -> Address:
    address = ipaddress.ip_address(text.split("%", 1)[0])  # no IPv6 zone
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
