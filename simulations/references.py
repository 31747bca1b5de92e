"""What a federation is measured against, on the very same split: pooled and local-only training.

- ``pooled``: one model trained on the union of every site's training split (what the hospitals
  would get if they could share images), scored on the server's test set and each site's
  validation split.
- ``local_only``: each site trains alone on its own training split; its model is scored on the
  server's test set (how far one hospital's data carries) and on its own validation split (how
  well it serves that hospital).

Both train for as many epochs as a site does in the federated run (rounds x local epochs) with the
same recipe, and report the rows ``simulations.sweep`` tabulates: ``global`` (server test set),
``worst-site`` (the lowest site-validation value) and ``personalized`` (site-validation mean,
weighted by validation images, as Flower weights the federated one).

Under ``model.standardise-features`` the pooled model reads features standardised with every
site's statistics (what the federation broadcasts), a site alone with its own. Under
``model.head-init`` both start from the closed-form head of the data they train on (pooled, or
the site's own), at the logit scale with the lowest loss on their validation splits, as the
federation's server sets it; with rounds they then fine-tune it.
"""

from __future__ import annotations

import numpy as np
import torch

from omnirad.adapters import trainable_state
from omnirad.broadcast import Broadcast
from omnirad.closed_form import (
    HEAD_INITS,
    SCALES,
    HeadStatistics,
    closed_form_head,
    head_inputs,
    scaled_likelihood,
    statistics_targets,
)
from omnirad.config import Config, ModelConfig
from omnirad.evaluation import CentralEvaluator
from omnirad.models import new_model
from omnirad.protocol import NUM_EXAMPLES, SITE_ID
from omnirad.site import LocalSite, RoundInputs
from omnirad.site_cache import get_site
from omnirad.standardise import Standardisation
from omnirad.training import train_model
from omnirad_fl.server.run_folder import worst_of


def federated_epochs(cfg: Config) -> int:
    return cfg.num_server_rounds * cfg.train.local_epochs


def weighted_mean(per_site: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over sites weighted by validation images, as Flower aggregates it."""
    names = [k for k in per_site[0] if k not in (NUM_EXAMPLES, SITE_ID)]
    weights = np.array([m[NUM_EXAMPLES] for m in per_site])
    return {k: float(np.average([m[k] for m in per_site], weights=weights)) for k in names}


def standardised_by(model: ModelConfig, sites: list[LocalSite]) -> Broadcast | None:
    """The feature standardisation these sites' statistics give, when the configuration asks for it."""
    if not model.standardise_features:
        return None
    moments = [site.feature_moments() for site in sites]
    return Broadcast(standardisation=Standardisation.from_moments(sum(moments[1:], moments[0])))


def closed_form_start(recipe: ModelConfig, model: torch.nn.Module, inputs: torch.Tensor, labels: np.ndarray,
                      site: LocalSite, val: tuple[torch.Tensor, np.ndarray]) -> None:
    """Under ``model.head-init`` (in ``recipe``): set the closed-form head of this training data on
    ``model``, its logit scale chosen on the validation images ``val`` (inputs, labels)."""
    spec = HEAD_INITS[recipe.head_init]
    if spec is None:
        return
    head = closed_form_head(model)
    targets = statistics_targets(site.task, labels)
    weight, bias = spec.solve(HeadStatistics.of(head_inputs(head, inputs), targets, with_gram=spec.with_gram), recipe)
    head.set_closed_form(weight.float(), bias.float(), 1.0)
    losses = scaled_likelihood(model, val[0], site.task, val[1], SCALES)
    head.set_closed_form(weight.float(), bias.float(), SCALES[int(losses.argmin())])


def pooled(cfg: Config) -> dict[str, dict[str, float]]:
    """The configured model trained centrally on every site's training split together."""
    sites = [get_site(cfg, site_id) for site_id in range(cfg.data.num_sites)]
    inputs = torch.cat([s.train_set.inputs for s in sites])
    labels = np.concatenate([s.train_set.labels for s in sites])
    broadcast = standardised_by(cfg.model, sites)
    model = new_model(cfg, broadcast)
    val = (torch.cat([s.val_set.inputs for s in sites]), np.concatenate([s.val_set.labels for s in sites]))
    closed_form_start(cfg.model, model, inputs, labels, sites[0], val)
    train_model(model, inputs, labels, sites[0].task, train=cfg.train, epochs=federated_epochs(cfg), seed=cfg.run.seed,
                placement=sites[0].placement)
    state = trainable_state(model)
    return {"global": CentralEvaluator(cfg, broadcast)(state),
            "worst-site": worst_of([s.evaluate(RoundInputs(state, 0, broadcast=broadcast)) for s in sites]),
            "personalized": {}}  # one model for all: nothing is personal


def local_only(cfg: Config) -> dict[str, dict[str, float]]:
    """Every site trains alone; test metrics are averaged over sites, as each would deploy its own."""
    sites = [get_site(cfg, site_id) for site_id in range(cfg.data.num_sites)]
    evaluator, tests, per_site = CentralEvaluator(cfg), [], []
    for site in sites:
        broadcast = standardised_by(cfg.model, [site])
        model = new_model(cfg, broadcast)
        closed_form_start(cfg.model, model, site.train_set.inputs, site.train_set.labels, site,
                          (site.val_set.inputs, site.val_set.labels))
        site.train(model, 0, epochs=federated_epochs(cfg))
        state = trainable_state(model)
        tests.append(evaluator.with_broadcast(broadcast)(state))
        per_site.append(site.evaluate(RoundInputs(state, 0, broadcast=broadcast)))
    global_mean = {k: float(np.mean([t[k] for t in tests])) for k in tests[0]} if tests[0] else {}
    return {"global": global_mean, "worst-site": worst_of(per_site), "personalized": weighted_mean(per_site)}

