"""Model architectures and runtimes; importing the package registers every one of them with the
registry."""

from slipway.models import engagement, lexical, onnx, text  # noqa: F401
