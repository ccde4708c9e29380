"""Dashboard widgets: run charts and tables."""
