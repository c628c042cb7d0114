"""The dataset export and what it strips from photos."""
