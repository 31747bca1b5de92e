"""Every random stream of a run, derived from ``run.seed`` in one place.

Each stream is distinct per site and round, so a site's round is reproducible on its own and two
streams never coincide by accident. The formulas are the ones every documented result was
measured with: changing one changes those results.
"""

from __future__ import annotations


def site_split_seed(run_seed: int, site_id: int) -> int:
    """A site's local train/validation split."""
    return run_seed + site_id


def site_round_seed(run_seed: int, server_round: int, site_id: int) -> int:
    """Shuffling, dropout and DP noise of one site's round of adapter training."""
    return run_seed * 100_003 + server_round * 1_009 + site_id


def statistics_noise_seed(run_seed: int, site_id: int, draw: int = 0) -> int:
    """The DP noise of a site's closed-form statistics (round 0's stream); ``draw`` > 0: another
    draw, for a restarted secure sum under distributed noise (which must not repeat its noise)."""
    base = site_round_seed(run_seed, 0, site_id)
    return base if draw == 0 else base * 1_000_003 + draw


def ssl_site_seed(run_seed: int, site_id: int) -> int:
    """A site's self-supervised pretraining, before rounds are mixed in (``ssl_round_seed``)."""
    return run_seed * 1000 + site_id


def ssl_round_seed(site_seed: int, server_round: int) -> int:
    """Views and masks of one round of a site's self-supervised pretraining."""
    return site_seed * 1_000_003 + server_round


def epoch_seed(seed: int, epoch: int) -> int:
    """One epoch of central pretraining."""
    return seed * 100_003 + epoch
