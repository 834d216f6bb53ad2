"""prrt_utils: the thin helper package behind the PRRT-PFS book.

One module per pipeline stage; data flows one way:
raw studies + lab table -> cohort -> preprocessed volumes -> folds -> models
-> training -> predictions -> statistics -> figures.
"""

__version__ = "0.1.0"
