"""What a site answers: one handler per message type, registered by its feature's module.

The ClientApp (``client/app.py``) installs every registered handler; a feature that needs the
sites to answer a new message (a query before round 1, another kind of round) registers its
handler in its own module here in ``client/`` instead of adding one to the app.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

Handler = Callable[[Message, Context], Message]
CATEGORIES = ("train", "evaluate", "query")
DEFAULT_ACTION = "default"  # Flower's action of a bare ``train`` / ``evaluate`` / ``query`` message

SITE_HANDLERS: dict[str, Handler] = {}  # "<category>.<action>" -> handler


def site_handler(category: str, action: str = DEFAULT_ACTION) -> Callable[[Handler], Handler]:
    """Register the decorated function as the site's answer to ``<category>.<action>`` messages."""
    if category not in CATEGORIES:
        raise ValueError(f"site handler: unknown message category {category!r}; one of {', '.join(CATEGORIES)}")

    def register(handler: Handler) -> Handler:
        name = f"{category}.{action}"
        if name in SITE_HANDLERS:
            raise ValueError(f"site handler: {name} is registered twice")
        SITE_HANDLERS[name] = handler
        return handler

    return register


def install(app: ClientApp) -> ClientApp:
    """Register every site handler with Flower's ``app`` (its mods wrap each of them)."""
    for name, handler in SITE_HANDLERS.items():
        category, action = name.split(".")
        getattr(app, category)(action)(handler)
    return app
