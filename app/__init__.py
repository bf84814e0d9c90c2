"""bulk360-relay: the service between a company's systems and the Bulk360 SMS/WhatsApp gateway."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bulk360-relay")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
