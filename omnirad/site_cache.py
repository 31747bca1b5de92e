"""The sites a process serves, kept between messages so each site's images are encoded once.

A simulation worker serves many rounds of many sites; rebuilding a ``LocalSite`` per message
would re-read and re-encode its images every time.
"""

from __future__ import annotations

from collections import OrderedDict

from omnirad.config.io import to_yaml
from omnirad.config.schema import Config
from omnirad.site import LocalSite

_SITES: OrderedDict[tuple[str, int], LocalSite] = OrderedDict()
_SITE_CACHE_BYTES = 1 << 30  # what a worker keeps of its sites' images and encoded inputs (set_cache_limit)


def _held_bytes(site: LocalSite) -> int:
    """Images and, once computed, encoded inputs that a cached site holds."""
    held = 0
    for part in (site.train_set, site.val_set):
        held += part.data.images.nbytes
        if "inputs" in part.__dict__:
            held += part.inputs.nbytes
    return held


def set_cache_limit(limit_bytes: int) -> None:
    """What this process keeps of its sites before the least recently used goes: a deployed site
    runtime lives as long as the site and sets it from its site file (``site-cache-mib``)."""
    global _SITE_CACHE_BYTES
    if limit_bytes < 0:
        raise ValueError(f"site cache limit {limit_bytes}: must be 0 or more bytes")
    _SITE_CACHE_BYTES = limit_bytes


def get_site(cfg: Config, site_id: int) -> LocalSite:
    """The process-wide ``LocalSite`` for this configuration. Sites are kept, least recently used
    first out, while they hold under the limit (1 GiB unless ``set_cache_limit``): a worker that
    serves 100 small sites keeps them all, one with large token maps a few."""
    key = (to_yaml(cfg), site_id)
    if key in _SITES:
        _SITES.move_to_end(key)
        return _SITES[key]
    while _SITES and sum(_held_bytes(s) for s in _SITES.values()) > _SITE_CACHE_BYTES:
        _SITES.popitem(last=False)
    _SITES[key] = LocalSite(cfg, site_id)
    return _SITES[key]
