"""Tables, exports and (later) charts over stored results. No torch, no textual."""
