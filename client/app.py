"""Flower ClientApp: a simulated or real site answers the server's messages.

Each message type has one handler, registered by its feature's module (``site_handlers``);
``replies.error_replies`` turns every failure into a coded error reply. Message keys and error
codes are in ``omnirad.protocol``.
"""

from __future__ import annotations

from flwr.clientapp import ClientApp

from omnirad_fl.client import closed_form, cross_site, gather, multitask, pretraining, rounds, vocabulary  # noqa: F401
from omnirad_fl.client.replies import error_replies
from omnirad_fl.client.site_handlers import install

app = install(ClientApp(mods=[error_replies]))
