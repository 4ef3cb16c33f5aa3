"""Configuration: YAML files -> typed, validated, immutable run specifications.

Every mistake in a file is collected and reported together, one line each, as
``FILE:LINE: path.to.key: message``. ``run`` reads one run, ``fleet`` a fleet block,
``file`` a whole file, ``shards`` splits a configuration across daemons.
"""

from simulator.config.file import Config, build_config, load_config, load_default, load_file
from simulator.config.run import RunSpec
from simulator.schema.errors import ConfigError, ConfigIssue

__all__ = ["Config", "ConfigError", "ConfigIssue", "RunSpec", "build_config", "load_config",
           "load_default", "load_file"]
