"""DistributedTrainer: the fastai side of a distributed run (DDP wrapping, the sampler's epoch, buffer sync).

The process-group plumbing (setup, collectives, samplers) is runtime/distributed.py.
"""

from __future__ import annotations

from typing import Any

from fastai.basic_train import Learner, LearnerCallback
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from runtime.distributed import DistEnv, ResumableDistributedSampler, broadcast_buffers


class DistributedTrainer(LearnerCallback):
    """Wraps the model in DistributedDataParallel for training (world size > 1) and sets the training sampler's
    epoch (absolute: `start_epoch` + fastai's epoch) before every epoch, in single-process runs too.

    Evaluation must use the unwrapped model (`unwrap(learn.model)`): shards can differ by one batch, and a DDP
    forward may start collectives. At the end the buffers of rank 0 are copied to every rank, so all ranks hold
    identical weights, and the model is unwrapped again. When training ends with an exception (fastai still calls
    on_train_end) no collective is entered: the other ranks may be blocked in DDP's own all-reduce, and a
    mismatched collective would hold every rank until the process-group timeout instead of letting this one exit.
    """

    _order = -20  # before every callback that touches the model

    def __init__(self, learn: Learner, env: DistEnv, sampler: ResumableDistributedSampler | None = None,
                 start_epoch: int = 0, sync_bn: bool = False, find_unused_parameters: bool = False):
        super().__init__(learn)
        self.env, self.sampler, self.start_epoch = env, sampler, start_epoch
        self.sync_bn, self.find_unused_parameters = sync_bn, find_unused_parameters

    def on_train_begin(self, **kwargs: Any) -> None:
        if not self.env.distributed or isinstance(self.learn.model, DistributedDataParallel):
            return
        model = self.learn.model
        if self.sync_bn and self.env.device.type == 'cuda':
            # Only the module objects change; parameters (and so the optimiser's references) stay the same.
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [self.env.device.index] if self.env.device.type == 'cuda' else None
        self.learn.model = DistributedDataParallel(model, device_ids=device_ids,
                                                   find_unused_parameters=self.find_unused_parameters)

    def on_epoch_begin(self, epoch: int, **kwargs: Any) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(self.start_epoch + epoch)

    def on_train_end(self, exception: Any = None, **kwargs: Any) -> None:
        if isinstance(self.learn.model, DistributedDataParallel):
            if not exception:
                broadcast_buffers(self.learn.model)
            self.learn.model = self.learn.model.module
