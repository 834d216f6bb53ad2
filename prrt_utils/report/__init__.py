"""The book: the runner, notebook setup, tables and key findings for readers, the positive control stage, patient reports."""
