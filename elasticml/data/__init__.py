"""The one data path: map-style Datasets, the elastic batch sampler and the DataLoader."""
