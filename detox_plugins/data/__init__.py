"""Small datasets written by the detox-plugins team (no external data is copied here)."""
