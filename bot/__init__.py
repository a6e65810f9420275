"""PEON: game servers as Docker containers, run from Discord."""

__version__ = "0.1.0"
