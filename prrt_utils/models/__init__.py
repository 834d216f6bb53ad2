"""Networks, training, the cross-validation runner, CT pretraining, the radiomics baseline, survival models and model packages."""
