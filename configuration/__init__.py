"""The run configuration in one place: loading and template defaults (config), upstream alias keys (aliases),
value ranges (ranges)."""

from configuration.config import OPEN_PREFIXES, REPO_ROOT, TEMPLATE_PATH, Config, ConfigError, load_yaml, resolve_path

__all__ = ['OPEN_PREFIXES', 'REPO_ROOT', 'TEMPLATE_PATH', 'Config', 'ConfigError', 'load_yaml', 'resolve_path']
