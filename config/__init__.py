"""Configuration: YAML -> frozen, validated dataclasses (`config.schema`), loaded by
`config.load` with errors that name the file, line and key path.

May import `dtab`; must not import `proxy`.
"""

from .load import ConfigError, default_config, load_file, load_text, to_json
from .policy import ClientPolicy, ServicePolicy, client_policy, service_policy
from .schema import (
    DEFAULT_TRUSTED_CIDRS,
    Admin,
    ClientConfig,
    ClientTls,
    Config,
    HmacConfig,
    IdentifierConfig,
    Limits,
    NamerConfig,
    OverrideConfig,
    RouterConfig,
    ServerConfig,
    ServerTls,
)

__all__ = [
    "DEFAULT_TRUSTED_CIDRS",
    "Admin",
    "ClientConfig",
    "ClientPolicy",
    "ClientTls",
    "Config",
    "ConfigError",
    "HmacConfig",
    "IdentifierConfig",
    "Limits",
    "NamerConfig",
    "OverrideConfig",
    "RouterConfig",
    "ServerConfig",
    "ServerTls",
    "ServicePolicy",
    "client_policy",
    "default_config",
    "load_file",
    "load_text",
    "service_policy",
    "to_json",
]
