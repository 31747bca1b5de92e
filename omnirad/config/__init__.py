"""One configuration schema for every way of running OmniRad-FL: the schema and its errors, nothing else.

``schema``: the sections and their documented fields; ``io``: flat keys, YAML, overrides;
``parse``: flat keys to a ``Config`` of the schema's types; ``checks``: what the numbers alone must
satisfy; ``federation``: ``data.num-sites`` left to the federation. Keys on the wire and the
command line are flat, dotted and kebab-case (``data.num-sites``), as Flower's ``run_config`` has them.

Values that pick an implementation (``model.encoder``, ``data.dataset``, ``ssl.objective``, ...)
are checked beside the registry that holds them, which imports this package: so this package
imports none of them. ``omnirad.configure.load_config``, above every registry, parses, resolves
and runs every check; it is how a ``Config`` is made.
"""

from omnirad.config.federation import FEDERATION_SIZE, require_num_sites
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
           "TrainConfig", "comma_list", "flat_defaults", "flatten_keys", "parse_overrides",
           "read_config_file", "read_config_tree", "require_num_sites", "to_flat", "to_yaml", "toml_literal"]
