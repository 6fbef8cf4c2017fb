"""Faster variants of registered models: distillation and the measurements that compare them."""
