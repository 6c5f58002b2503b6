"""make bench: the bench's measurements and its roofline."""
