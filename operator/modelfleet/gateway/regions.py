"""Where a client is (pure): the edge's header, else the client-network table, else the gateway's own region."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from functools import cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@cache
def _networks(table: tuple[tuple[str, str], ...]) -> tuple[tuple[Network, str], ...]:
    """Longest prefix first, so the first match is the most specific."""
    parsed = [(ipaddress.ip_network(cidr, strict=False), region) for cidr, region in table]
    return tuple(sorted(parsed, key=lambda item: -item[0].prefixlen))


def region_of_address(address: str | None, cidrs: Mapping[str, str]) -> str | None:
    if not address or not cidrs:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return next((region for net, region in _networks(tuple(cidrs.items())) if ip in net), None)


def client_region(header: str | None, address: str | None, cidrs: Mapping[str, str], own: str) -> str:
    """The header wins (the edge knows best), then the client's network, then the gateway's own region."""
    if header and header.strip():
        return header.strip().lower()
    return region_of_address(address, cidrs) or own
