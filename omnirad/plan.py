"""A run's plan: the configuration as the user wrote it, checked once where an app receives it, and
what the run learns on the way, each a field of the plan set where it is learnt:

- ``num_sites``: the federation's size, when ``data.num-sites`` is 0 (Flower decides it);
- ``encoder_weights``: the encoder federated SSL pretraining wrote, else ``model.weights``;
- ``vocabulary``: the file of the words the sites counted (a federated vocabulary), else
  ``data.vocabulary``;
- ``site``: a deployed site's own paths and device (its node config), which the server's run
  configuration cannot know.

The given configuration is never rewritten: ``config`` is the view components read, built from
the plan once per plan (``given`` with the learnt fields in their keys) and held to every check a
given value is held to, so a learnt value that breaks a rule (a federation smaller than
``strategy.min-sites``) is refused with the key's name, as a written one would be.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from functools import cached_property

from omnirad.config import FEDERATION_SIZE, Config
from omnirad.configure import validate


@dataclass(frozen=True)
class SiteSettings:
    """What a deployed site's ``omnirad-client`` says about the site itself (its node config)."""

    data_file: str
    encoder_weights: str
    cache_dir: str
    device: str = "auto"
    precision: str = "auto"


@dataclass(frozen=True)
class RunPlan:
    """See the module doc. Derive a new plan with ``in_federation``, ``with_encoder``,
    ``with_vocabulary`` and ``at_site``; a plan never changes."""

    given: Config
    num_sites: int
    encoder_weights: str
    vocabulary: str
    site: SiteSettings | None = None

    @classmethod
    def of(cls, given: Config) -> RunPlan:
        """The plan of a checked configuration, before the run has learnt anything."""
        return cls(given, given.data.num_sites, given.model.weights, given.data.vocabulary)

    def in_federation(self, size: int) -> RunPlan:
        """In a federation of ``size`` sites: the number of sites, unless the configuration gives it."""
        if self.given.data.num_sites != FEDERATION_SIZE:
            return self
        return self._learnt(num_sites=size)

    def with_encoder(self, weights: str) -> RunPlan:
        """The encoder the adapter phase uses is ``weights`` (federated pretraining's result)."""
        return self._learnt(encoder_weights=weights)

    def with_vocabulary(self, path: str) -> RunPlan:
        """Captions are read with the words of ``path`` (the run's shared vocabulary)."""
        return self._learnt(vocabulary=path)

    def at_site(self, site: SiteSettings) -> RunPlan:
        """The plan as a deployed site runs it: its own data, encoder file, cache and device. Its
        vocabulary comes from the server's messages (``with_vocabulary``): a server path means
        nothing here."""
        return self._learnt(site=site, encoder_weights=site.encoder_weights, vocabulary="")

    def _learnt(self, **fields: object) -> RunPlan:
        """A new plan with ``fields``, checked now: a learnt value that breaks a rule fails where it
        is learnt, naming the key."""
        plan = dataclasses.replace(self, **fields)  # type: ignore[arg-type]  # the fields are this class's
        _ = plan.config
        return plan

    @cached_property
    def config(self) -> Config:
        """The configuration components read: ``given`` with what the plan learnt in its keys,
        checked again (see the module doc)."""
        if self._learnt_nothing():
            return self.given
        cfg = copy.deepcopy(self.given)
        cfg.data.num_sites, cfg.model.weights, cfg.data.vocabulary = self.num_sites, self.encoder_weights, self.vocabulary
        if self.site is not None:
            cfg.data.site_files, cfg.model.cache_dir = self.site.data_file, self.site.cache_dir
            cfg.run.device, cfg.run.precision = self.site.device, self.site.precision
        validate(cfg)
        return cfg

    def _learnt_nothing(self) -> bool:
        g = self.given
        return (self.site is None and self.num_sites == g.data.num_sites and self.encoder_weights == g.model.weights
                and self.vocabulary == g.data.vocabulary)
