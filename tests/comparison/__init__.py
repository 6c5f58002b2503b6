"""make compare and make study: the sweep, the statistics, the reports."""
