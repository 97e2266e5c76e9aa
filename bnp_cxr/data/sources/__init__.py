"""Public chest-radiograph datasets written as the project's standard manifest (one module per source)."""
