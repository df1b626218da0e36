"""Named experiments as YAML (package data)."""
