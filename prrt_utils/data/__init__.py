"""The cohort and its images: the paper's reference numbers, the schema and intake, the cohort table, organ masks, preprocessing, folds."""
