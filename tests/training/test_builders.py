"""The optimiser training builds: torch's multi-tensor Adam (optimizer.args.foreach) against the per-tensor one."""

import torch

from configuration import Config
from tests.helpers import randomise
from training.builders import optimizer_func


def test_template_optimiser_is_foreach_adam_with_the_per_tensor_steps():
    config = Config()
    opt_class = optimizer_func(config)
    assert opt_class.func is torch.optim.Adam and opt_class.keywords['foreach'] is True

    def steps(foreach: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = randomise(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.999), foreach=foreach)
        x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
        for _ in range(5):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        return [p.detach() for p in model.parameters()]

    for a, b in zip(steps(True), steps(False)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
