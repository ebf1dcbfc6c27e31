"""Small applications written the way their libraries' own examples are, which tests run
unmodified (they are not tests, and know nothing of pairkit)."""
