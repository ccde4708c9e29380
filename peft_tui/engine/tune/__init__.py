"""Tuning studies (`peft-tui tune`): per-method search spaces (space.py, torch- and optuna-free, imported by
the method modules) and the study driver (study.py, which imports optuna inside its functions)."""
