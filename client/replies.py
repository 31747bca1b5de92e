"""What the server learns of a failure at a site: a code and a message the project wrote.

``error_replies`` is a Flower mod (``ClientApp(mods=[...])``): it wraps every handler of the
ClientApp in one place, logs the whole error with its traceback at the site, and answers with a
coded error reply. Flower would otherwise send the exception's text, which may name the site's
files or values.
"""

from __future__ import annotations

import logging

from flwr.app import Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable

from omnirad.config import ConfigError
from omnirad.data.npz import DataFileError
from omnirad.encoders import EncoderWeightsError
from omnirad.faults import SiteCrash
from omnirad.multitask import TaskMismatch
from omnirad.privacy import PrivacyBudgetSpent
from omnirad.protocol import (
    BUDGET_SPENT,
    CONFIG_REFUSED,
    DATA_UNREADABLE,
    SITE_FAILED,
    STATE_LOST,
    WEIGHTS_UNREADABLE,
    WRONG_ENCODER,
    WRONG_TASK,
)
from omnirad.site_state import SiteStateError
from omnirad_fl.client.deployment import EncoderMismatch

log = logging.getLogger(__name__)
# Errors whose text the project wrote and which hold no path or data: sent back as they are.
SPOKEN_ERRORS: dict[type[Exception], int] = {PrivacyBudgetSpent: BUDGET_SPENT, EncoderMismatch: WRONG_ENCODER,
                                             TaskMismatch: WRONG_TASK, SiteCrash: SITE_FAILED,
                                             SiteStateError: STATE_LOST}
# Errors whose text may name a site's files or values: a fixed message goes back, the text stays here.
SILENT_ERRORS: dict[type[Exception], tuple[int, str]] = {
    ConfigError: (CONFIG_REFUSED, "the site refused the run configuration; its log names the key"),
    DataFileError: (DATA_UNREADABLE, "the site's data could not be read; see its log"),
    EncoderWeightsError: (WEIGHTS_UNREADABLE, "the site's encoder weights did not load; see its log"),
}


def error_reply(err: Exception) -> Error:
    """The coded error a site sends for ``err``."""
    for kind, code in SPOKEN_ERRORS.items():
        if isinstance(err, kind):
            return Error(code=code, reason=str(err))
    for kind, (code, message) in SILENT_ERRORS.items():
        if isinstance(err, kind):
            return Error(code=code, reason=message)
    return Error(code=SITE_FAILED, reason=f"an unexpected {type(err).__name__} at the site; see its log")


def error_replies(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Every failure of a handler becomes an error reply; the whole error is logged here at the site."""
    try:
        return call_next(msg, context)
    except Exception as err:  # noqa: BLE001 - each failure is answered, none leaks its text
        log.exception("%s failed", msg.metadata.message_type)
        return Message(error_reply(err), reply_to=msg)
