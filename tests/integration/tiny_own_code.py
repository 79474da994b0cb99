"""User code for tiny_own.yaml: four Gaussian blobs in 8 dimensions and an MLP."""

import torch
from torch.utils.data import Dataset


class Blobs(Dataset):
    """Dict samples with their own index, so a test can see which samples a batch held."""

    def __init__(self, samples: int, seed: int, bad_row: int | None = None) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(4, (samples,), generator=generator)
        centres = torch.randn(4, 8, generator=torch.Generator().manual_seed(0)) * 2
        self.features = centres[self.labels] + torch.randn(samples, 8, generator=generator)
        self.bad_row = bad_row

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        if index == self.bad_row:
            raise ValueError(f"row {index}: 'n/a' is not a number")
        return {"features": self.features[index], "target": self.labels[index], "index": index}


class MLP(torch.nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.GELU(),
                                       torch.nn.Linear(hidden, 4))

    def forward(self, features: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(features)
