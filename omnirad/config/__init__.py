"""One configuration schema for every way of running OmniRad-FL.

``schema``: the sections and their documented fields; ``io``: flat keys, YAML, overrides;
``checks``: what the types alone do not express, one function per section; ``load_config``
joins them. Keys on the wire and the command line are flat, dotted and kebab-case
(``data.num-sites``), as Flower's ``run_config`` has them.
"""

from omnirad.config.federation import FEDERATION_SIZE, require_num_sites, with_num_sites
from omnirad.config.io import (
    comma_list,
    flat_defaults,
    flatten_keys,
    parse_overrides,
    read_config_file,
    read_config_tree,
    to_flat,
    to_yaml,
    toml_literal,
)
from omnirad.config.load import load_config
from omnirad.config.schema import (
    Config,
    DataConfig,
    FaultsConfig,
    ModelConfig,
    MultitaskConfig,
    PersonalizationConfig,
    PrivacyConfig,
    RunConfig,
    SpectralConfig,
    SslConfig,
    StrategyConfig,
    TrainConfig,
)
from omnirad.errors import ConfigError

__all__ = ["FEDERATION_SIZE", "Config", "ConfigError", "DataConfig", "FaultsConfig", "ModelConfig", "MultitaskConfig",
           "PersonalizationConfig", "PrivacyConfig", "RunConfig", "SpectralConfig", "SslConfig", "StrategyConfig",
           "TrainConfig", "comma_list", "flat_defaults", "flatten_keys", "load_config", "parse_overrides",
           "read_config_file", "read_config_tree", "require_num_sites", "to_flat", "to_yaml", "toml_literal",
           "with_num_sites"]
