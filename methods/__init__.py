"""Fusion method plugins: one module per method over the contract in methods/base.py.

Built-ins (registered in harness.registry): profuser, fusellm, inference-only, averaging. The sparse top-k
losses they share are in methods/losses.py, ProFuser's weight schedules in methods/schedules.py.
"""
