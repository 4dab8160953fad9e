"""Configuration: YAML -> frozen, validated dataclasses (`config.schema`), loaded by
`config.load` with errors that name the file, line and key path.

May import `dtab`; must not import `proxy`.
"""

from .load import (
    ConfigError,
    admin_token_problem,
    default_config,
    load_file,
    load_text,
    read_token_file,
    to_json,
)
from .policy import ClientPolicy, ServicePolicy, client_policy, service_policy
from .schema import (
    DEFAULT_TRUSTED_CIDRS,
    Admin,
    AdminAuth,
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
    "AdminAuth",
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
    "admin_token_problem",
    "client_policy",
    "default_config",
    "load_file",
    "load_text",
    "read_token_file",
    "service_policy",
    "to_json",
]
