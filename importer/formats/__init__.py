"""Formats: compression layers and disk-image headers, recognised by magic bytes only."""
