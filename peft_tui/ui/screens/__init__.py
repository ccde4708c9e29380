"""Dashboard screens: the new-run form, run details, quit confirmation."""
