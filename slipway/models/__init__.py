"""Model architectures; importing the package registers every one of them with the registry."""

from slipway.models import engagement, text  # noqa: F401
