"""Fusion method plugins: one module per method over the contract in methods/base.py.

Built-ins (harness/registry.py's BUILTIN_MODULES): profuser, fusellm, inference-only, averaging, uld, gold, fusechat3;
plugins from other packages come through the `harness.methods` entry point group (docs/plugins.md). The sparse top-k
losses they share are in methods/losses.py, ProFuser's weight schedules in methods/schedules.py.
"""
