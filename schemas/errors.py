"""The root of stylestream's exception hierarchy."""


class StylestreamError(Exception):
    """Base class of every error stylestream raises on purpose."""
