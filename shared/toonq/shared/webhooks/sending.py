"""One POST of a webhook: to an address checked when it is resolved, never following a
redirect, within a timeout, reading nothing of the answer but its status."""

from __future__ import annotations

from dataclasses import dataclass

import urllib3

from toonq.shared.errors import InvalidCallbackURLError
from toonq.shared.webhooks.addresses import CallbackPolicy, parse


@dataclass(frozen=True)
class DeliveryResult:
    """A 2xx answer (`delivered`), or why not: the status of another answer, or the error."""

    status_code: int | None
    problem: str | None

    @property
    def delivered(self) -> bool:
        return self.problem is None


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    policy: CallbackPolicy,
    timeout_s: float,
) -> DeliveryResult:
    """POST `body` to `url`, connecting to the first address its host resolves to now, checked
    against `policy` (so a name re-pointed inside the network is refused)."""
    try:
        target = parse(url)
        address = policy.addresses(target)[0]
    except InvalidCallbackURLError as exc:
        return DeliveryResult(None, f"refused: {exc}")
    default_port = 443 if target.scheme == "https" else 80
    host_header = target.host if ":" not in target.host else f"[{target.host}]"
    if target.port != default_port:
        host_header = f"{host_header}:{target.port}"
    timeout = urllib3.Timeout(total=timeout_s)
    pool: urllib3.HTTPConnectionPool
    if target.scheme == "https":
        # Connect to the checked address, but verify the certificate for the name.
        pool = urllib3.HTTPSConnectionPool(
            str(address),
            target.port,
            timeout=timeout,
            retries=False,
            server_hostname=target.host,
            assert_hostname=target.host,
        )
    else:
        pool = urllib3.HTTPConnectionPool(str(address), target.port, timeout=timeout, retries=False)
    try:
        response = pool.urlopen(
            "POST",
            target.path,
            body=body,
            headers={**headers, "host": host_header},
            redirect=False,
            assert_same_host=False,
            preload_content=False,
        )
        status = response.status
    except urllib3.exceptions.HTTPError as exc:
        return DeliveryResult(None, f"{type(exc).__name__}: {exc}")
    finally:
        pool.close()
    if 200 <= status < 300:
        return DeliveryResult(status, None)
    return DeliveryResult(status, f"answered HTTP {status}")
