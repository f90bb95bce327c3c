"""PixArt-style text-to-image data curation on Ray Data."""

__version__ = "0.1.0"
