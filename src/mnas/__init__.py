"""mnas: platform-aware neural architecture search in the way of MnasNet."""

__version__ = "0.1.0"
