"""Command-line entry points (console scripts bnp-cxr-*; tools/*.py are thin shims onto these)."""
