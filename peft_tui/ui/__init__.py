"""The Textual dashboard (`peft-tui launch`). A sink over the shared engine: no training logic here.

Import `peft_tui.ui.app.create_app`; nothing in `peft_tui.engine` imports this package.
"""
