"""prrt_utils: the thin helper package behind the PRRT-PFS book.

One sub-package per group of pipeline stages, in the order data flows
(DESIGN.md "Package layout"): io -> data -> synthetic -> models -> analysis ->
report, with cli on top. Raw studies + lab table -> cohort -> preprocessed
volumes -> folds -> models -> training -> predictions -> statistics -> figures.
"""

__version__ = "0.1.0"
