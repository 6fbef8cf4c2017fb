"""Model architectures and their preprocessing; each is loadable from the registry."""
