"""What a strategy asks of each site besides plain local training (``registry``).

Importing this package registers every site method (``SITE_METHODS``).
"""

from omnirad import spectral  # noqa: F401 - registers "spectral"
from omnirad.methods.registry import SITE_METHODS, SiteMethod, check_site_method, site_method

__all__ = ["SITE_METHODS", "SiteMethod", "check_site_method", "site_method"]
