"""What a site answers: one handler per message type, registered by its feature's module.

The ClientApp (``client/app.py``) installs every registered handler; a feature that needs the
sites to answer a new message (a query before round 1, another kind of round) registers its
handler in its own module here in ``client/`` instead of adding one to the app.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from omnirad.logs import show_progress

Handler = Callable[[Message, Context], Message]
CATEGORIES = ("train", "evaluate", "query")
DEFAULT_ACTION = "default"  # Flower's action of a bare ``train`` / ``evaluate`` / ``query`` message

SITE_HANDLERS: dict[str, Handler] = {}  # "<category>.<action>" -> handler
# Here, not in client/app.py: a simulation's Ray workers receive the ClientApp pickled and import
# only the modules its handlers live in, every one of which imports this one.
show_progress()


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
