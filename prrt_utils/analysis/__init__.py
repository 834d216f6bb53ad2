"""Reading stored predictions: metrics, statistics, calibration and decision curves, explainability, external validation."""
