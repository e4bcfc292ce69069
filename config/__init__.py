"""Configuration: typed settings read from the environment, with embedded defaults."""

from config.settings import Settings, load_settings

__all__ = ["Settings", "load_settings"]
