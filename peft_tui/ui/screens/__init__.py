"""Dashboard screens: the main screen (its keys and actions), the new-run form, run details, quit confirmation."""
