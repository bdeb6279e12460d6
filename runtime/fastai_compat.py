"""Workarounds that let fastai 1.0.60 run on today's Python and torch, applied from project code.

Import this module before anything from fastai. It never edits installed files:
- fastai 1.0.60 imports `pkg_resources` (setuptools < 81 is pinned in requirements.txt); its deprecation
  warning is silenced here.
- fastprogress bars would write carriage-return noise into `train.txt`; fastai's training loop gets
  silent stand-ins.
- fastai replaces `DataLoader.__init__` with a wrapper frozen at torch 1.x's arguments (no
  `persistent_workers`, `prefetch_factor`, `generator`, ...) and a `pin_memory=True` default; the
  wrapper is replaced by one that forwards every argument and keeps fastai's `init_kwargs` record.
- fastai's `Learner.load` calls `torch.load` without `weights_only`; this project never calls it and reads
  checkpoints through `runtime.checkpoint.load_checkpoint`, which always passes `weights_only=True`.
"""

import importlib
import inspect
import warnings

import torch.utils.data

warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)
warnings.filterwarnings('ignore', message='.*enable_nested_tensor is True.*', category=UserWarning)
# fastai only now, with its import-time warnings silenced
_basic_data = importlib.import_module('fastai.basic_data')
_basic_train = importlib.import_module('fastai.basic_train')


class _SilentBar:
    """Iterates like a fastprogress bar and prints nothing."""

    def __init__(self, gen, total=None, *args, **kwargs):
        self.gen = gen
        self.total = len(gen) if total is None and hasattr(gen, '__len__') else total
        self.first_bar = self  # fastai's fit reads `pbar.first_bar.total` when resuming mid-run
        self.comment = ''

    def __iter__(self):
        yield from self.gen

    def __len__(self) -> int:
        return self.total

    def write(self, *args, **kwargs) -> None:
        pass


_basic_train.master_bar = _SilentBar
_basic_train.progress_bar = _SilentBar

_torch_dataloader_init = _basic_data.old_dl_init
_DATALOADER_ARGS = list(inspect.signature(_torch_dataloader_init).parameters)[2:]  # after self, dataset


def _dataloader_init(self: torch.utils.data.DataLoader, dataset, *args, **kwargs) -> None:
    """torch's own DataLoader.__init__, recording its arguments where fastai's DeviceDataLoader.new reads them."""
    self.init_kwargs = {**dict(zip(_DATALOADER_ARGS, args)), **kwargs}
    _torch_dataloader_init(self, dataset, *args, **kwargs)


torch.utils.data.DataLoader.__init__ = _dataloader_init
