"""imctl: the access layer of an instant-messaging system."""

__version__ = "0.1.0"
