"""Word-image datasets read from ABINet/clovaai-layout LMDBs (`num-samples`, `image-%09d`, `label-%09d`, 1-based)."""

from __future__ import annotations

import multiprocessing
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import cv2.utils.logging as cv2_logging
import lmdb
import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from runtime.distributed import process_rank
from transforms import TrainAugment
from utils import IMAGENET_MEAN, IMAGENET_STD, CharsetMapper, get_logger

_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)
MAX_REPLACE_TRIES = 100
WARN_FIRST = 5  # replaced samples reported one by one before switching to periodic counts
WARN_EVERY = 1000
MISSING_LABEL = 'missing (num-samples above the entries of the LMDB)'
SMALL_SIDE = 6  # in training, images with a side of this many pixels or fewer are skipped, as upstream


class DatasetError(RuntimeError):
    """An LMDB cannot be used: missing, not an LMDB, empty, truncated or holding a corrupt sample."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The LMDB folder does not exist."""


# lmdb refuses to open one environment twice in a process, and an environment must not be used across a
# fork: one environment per (process, real path), opened lazily in whichever process reads.
_ENVS: dict[tuple[int, str], lmdb.Environment] = {}


def _close_inherited(pid: int) -> None:
    """In a forked child, close the environments inherited from the parent.

    lmdb remembers open environments in a process-wide registry that a fork copies, so the child could not
    open its own until the inherited handle is closed. Closing a lock-free read-only handle in the child only
    unmaps the child's copy; the parent's stays valid.
    """
    for key in [k for k in _ENVS if k[0] != pid]:
        _ENVS.pop(key).close()


def open_lmdb(path: str | os.PathLike) -> lmdb.Environment:
    """The read-only, lock-free environment of `path` for this process (opened once, then shared)."""
    real = os.path.realpath(path)
    pid = os.getpid()
    env = _ENVS.get((pid, real))
    if env is not None:
        return env
    _close_inherited(pid)
    key = (pid, real)
    if not os.path.exists(real):
        raise DatasetNotFoundError(f'LMDB not found: {path}')
    data_file = os.path.join(real, 'data.mdb')
    if not os.path.isdir(real) or not os.path.isfile(data_file):
        raise DatasetError(f'not an LMDB folder (no data.mdb): {path}')
    try:
        env = lmdb.open(real, readonly=True, lock=False, readahead=False, meminit=False, max_readers=64)
    except lmdb.Error as e:
        raise DatasetError(f'cannot open LMDB {path}: {e}') from e
    # Reading a page past the end of a truncated file kills the process (SIGBUS), so check the size first.
    needed = (env.info()['last_pgno'] + 1) * env.stat()['psize']
    actual = os.path.getsize(data_file)
    if actual < needed:
        env.close()
        raise DatasetError(f'truncated LMDB {path}: data.mdb has {actual} bytes, its header needs {needed}')
    _ENVS[key] = env
    return env


def close_lmdb(path: str | os.PathLike) -> None:
    """Close and forget this process's environment of `path` (e.g. before rewriting that LMDB)."""
    env = _ENVS.pop((os.getpid(), os.path.realpath(path)), None)
    if env is not None:
        env.close()


@contextmanager
def quiet_opencv() -> Iterator[None]:
    """No OpenCV log lines (its decoders print their own complaint about a broken file) while the block runs."""
    level = cv2_logging.getLogLevel()
    cv2_logging.setLogLevel(cv2_logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2_logging.setLogLevel(level)


def decode_image(data: bytes | None) -> np.ndarray | None:
    """Encoded bytes -> H x W x 3 uint8 RGB, or None when undecodable. Greyscale becomes RGB, 16-bit 8-bit, and
    an alpha channel is composited over white (text on a transparent background stays readable)."""
    if not data:
        return None
    with quiet_opencv():  # the caller reports an undecodable image in its own words
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)  # keeps alpha; no EXIF rotation
    if img is None or img.size == 0:
        return None
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return over_white(cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA))
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def over_white(rgba: np.ndarray) -> np.ndarray:
    """H x W x 4 uint8 RGBA composited over a white background -> H x W x 3 uint8 RGB (rounded)."""
    alpha = rgba[..., 3:].astype(np.uint32)
    mixed = rgba[..., :3].astype(np.uint32) * alpha + 255 * (255 - alpha)
    return ((mixed + 127) // 255).astype(np.uint8)


def resize_keep_ratio(img: np.ndarray, img_h: int, img_w: int) -> np.ndarray:
    """Resize to height `img_h` keeping the aspect ratio (width capped at `img_w`), then pad right with black."""
    h, w = img.shape[:2]
    new_w = int(min(img_w, max(1, round(img_h * w / h))))
    img = cv2.resize(img, (new_w, img_h), interpolation=cv2.INTER_LINEAR)
    if new_w < img_w:
        img = cv2.copyMakeBorder(img, 0, 0, 0, img_w - new_w, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return img


def to_normalized_tensor(img: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 RGB -> contiguous 3 x H x W float32, scaled to 0..1 and ImageNet-normalised."""
    tensor = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
    return ((tensor - _MEAN) / _STD).contiguous()


def smooth_onehot(onehot: torch.Tensor, factor: float) -> torch.Tensor:
    """Label smoothing: (1 - factor) * onehot + factor / num_classes."""
    return (1.0 - factor) * onehot + factor / onehot.shape[-1]


class ImageDataset(Dataset):
    """One LMDB of word images; test mode keeps a fixed order, training mode replaces bad samples."""

    def __init__(self, path: str | os.PathLike, charset: CharsetMapper, is_training: bool, img_h: int = 32,
                 img_w: int = 128, data_aug: bool = True, case_sensitive: bool = False, multiscales: bool = False,
                 smooth_label: bool = False, smooth_factor: float = 0.1, seed: int | None = None):
        self.path = str(path)
        self.name = Path(os.path.normpath(self.path)).name
        self.charset = charset
        self.is_training = is_training
        self.img_h, self.img_w = img_h, img_w
        self.data_aug = data_aug
        self.case_sensitive = case_sensitive
        self.multiscales = multiscales
        self.smooth_label = smooth_label
        self.smooth_factor = smooth_factor
        self.seed = seed
        self.augment = TrainAugment() if is_training and data_aug else None
        self._draws = 0  # per-process counter mixed into the augmentation seed
        self._num_replaced = multiprocessing.Value('q', 0)  # shared with forked DataLoader workers
        self._num_small = multiprocessing.Value('q', 0)  # likewise, for images skipped as too small
        self._told_unknown = multiprocessing.Value('b', 0)  # characters outside the charset said once (all workers)
        self.num_missing = 0  # test mode: labels num-samples promises that the LMDB lacks

        with open_lmdb(self.path).begin() as txn:
            self.num_samples = self._read_count(txn)
            if is_training:
                self.indices: list[int] | None = None
                self.texts: list[str] | None = None
                self.num_left_out = 0
            else:
                self.indices, self.texts = [], []
                reasons: dict[str, int] = {}
                for index in range(1, self.num_samples + 1):
                    raw = self._get(txn, f'label-{index:09d}')
                    text = self._clean_label(raw)
                    if text is not None:
                        self.indices.append(index)
                        self.texts.append(text)
                    else:
                        why = self.label_problem(raw)
                        reasons[why] = reasons.get(why, 0) + 1
                self.num_missing = reasons.get(MISSING_LABEL, 0)
                self.num_left_out = self.num_samples - len(self.indices)
                if not self.indices:
                    counts = ', '.join(f'{n} {why}' for why, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
                    raise DatasetError(f'no usable label among the {self.num_samples} samples of {self.path}: '
                                       f'{counts}')

    def _get(self, txn: lmdb.Transaction, key: str) -> bytes | None:
        try:
            return txn.get(key.encode())
        except lmdb.Error as e:
            raise DatasetError(f'corrupt LMDB {self.path}: reading {key} failed: {e}') from e

    def _read_count(self, txn: lmdb.Transaction) -> int:
        raw = self._get(txn, 'num-samples')
        try:
            count = int(raw.decode()) if raw is not None else None
        except (UnicodeDecodeError, ValueError):
            count = None
        if count is None:
            raise DatasetError(f'not an ABINet LMDB (no valid num-samples): {self.path}')
        if count <= 0:
            raise DatasetError(f'empty LMDB (num-samples is {count}): {self.path}')
        return count

    def _clean_label(self, raw: bytes | None) -> str | None:
        """The cleaned label, or None when it is missing, not UTF-8 or not a valid target."""
        if raw is None:
            return None
        try:
            text = raw.decode('utf-8')
        except UnicodeDecodeError:
            return None
        text = self.charset.clean(text, self.case_sensitive)
        return text if self.charset.is_valid(text) else None

    def label_problem(self, raw: bytes | None) -> str:
        """Why a raw label is no usable target ('longer than dataset.max_length 25', ...)."""
        if raw is None:
            return MISSING_LABEL
        try:
            text = raw.decode('utf-8')
        except UnicodeDecodeError:
            return 'not UTF-8'
        unknown = self.charset.unknown_chars(text, self.case_sensitive)
        cleaned = self.charset.clean(text, self.case_sensitive)
        if len(cleaned) > self.charset.max_length:
            return f'longer than dataset.max_length {self.charset.max_length}'
        if unknown and not self.charset.is_valid(cleaned):
            return f'with characters outside the charset {self.charset.path}'
        return 'empty after cleaning' if not cleaned else 'not a valid target'

    def missing_note(self) -> str | None:
        """One warning line when `num-samples` promises more labels than the LMDB holds (test mode), else None."""
        if not self.num_missing:
            return None
        return (f'{self.path}: num-samples is {self.num_samples} but {self.num_missing} of those labels are missing '
                'from the LMDB; they are counted as left out')

    def _tell_unknown(self, index: int, raw: bytes | None) -> None:
        """Say once (for all worker processes) which characters of a training label the charset cannot hold."""
        if self._told_unknown.value or raw is None:
            return
        try:
            unknown = self.charset.unknown_chars(raw.decode('utf-8'), self.case_sensitive)
        except UnicodeDecodeError:
            return
        if not unknown:
            return
        with self._told_unknown.get_lock():
            if self._told_unknown.value:
                return
            self._told_unknown.value = 1
        get_logger().warning(
            f'{self.path}: label {index} holds characters outside the charset {self.charset.path} '
            f'({self.charset.num_classes} classes): {" ".join(repr(c) for c in unknown)}; such labels are replaced by '
            'random samples (or lose those characters where the charset drops them); said once, the count is at '
            'the end')

    def __len__(self) -> int:
        return self.num_samples if self.is_training else len(self.indices)

    def lmdb_index(self, i: int) -> int:
        """The 1-based LMDB index of dataset position `i`."""
        if not 0 <= i < len(self):
            raise IndexError(f'index {i} out of range for {self.path} ({len(self)} samples)')
        return i + 1 if self.is_training else self.indices[i]

    def label(self, i: int) -> str | None:
        """The cleaned text of dataset position `i` (None in training mode when the label is unusable)."""
        if not self.is_training:
            return self.texts[i]
        index = self.lmdb_index(i)
        with open_lmdb(self.path).begin() as txn:
            return self._clean_label(self._get(txn, f'label-{index:09d}'))

    labels = label

    @property
    def num_replaced(self) -> int:
        """Samples replaced so far because of a corrupt image or unusable label (all worker processes)."""
        return self._num_replaced.value

    @property
    def num_small(self) -> int:
        """Samples replaced so far because the image has a side of SMALL_SIDE px or less (all worker processes)."""
        return self._num_small.value

    def _rng(self, i: int) -> np.random.Generator:
        # torch.initial_seed() differs per DataLoader worker (and per epoch without persistent workers), the rank
        # per process of a distributed run (all seeded alike), the counter per draw within a process.
        self._draws += 1
        entropy = [torch.initial_seed(), process_rank(), self._draws, i]
        if self.seed is not None:
            entropy.append(self.seed % 2**63)
        return np.random.default_rng(entropy)

    def _report_replaced(self, index: int, reason: str, small: bool = False) -> None:
        counter = self._num_small if small else self._num_replaced
        with counter.get_lock():
            counter.value += 1
            count = counter.value
        logger = get_logger()
        if count <= WARN_FIRST:
            logger.warning(f'{self.path}: sample {index} replaced by a random one ({reason})')
        elif count % WARN_EVERY == 0:
            kind = f'a side of {SMALL_SIDE} px or less' if small else 'corrupt image or unusable label'
            logger.warning(f'{self.path}: {count} samples replaced so far ({kind})')

    def _load(self, index: int) -> tuple[np.ndarray | None, str | None, str]:
        """(image, clean label, why it is unusable: '' when both are fine)."""
        with open_lmdb(self.path).begin() as txn:
            raw = self._get(txn, f'label-{index:09d}')
            text = self._clean_label(raw)
            data = self._get(txn, f'image-{index:09d}')
        self._tell_unknown(index, raw)
        img = decode_image(data)
        if data is None:
            return img, text, f'no image-{index:09d} key in the LMDB (num-samples above its entries?)'
        if img is None:
            return img, text, 'undecodable image'
        return img, text, '' if text is not None else f'unusable label: {self.label_problem(raw)}'

    def _preprocess(self, img: np.ndarray, rng: np.random.Generator | None) -> torch.Tensor:
        if self.augment is not None and rng is not None:
            img = self.augment(img, rng)
        if self.multiscales:
            img = resize_keep_ratio(img, self.img_h, self.img_w)
        else:
            img = cv2.resize(img, (self.img_w, self.img_h), interpolation=cv2.INTER_LINEAR)
        return to_normalized_tensor(img)

    def _target(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        onehot, length = self.charset.onehot(text)
        if self.smooth_label:
            onehot = smooth_onehot(onehot, self.smooth_factor)
        return onehot.float().contiguous(), torch.tensor(length, dtype=torch.long)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        index = self.lmdb_index(i)
        if not self.is_training:
            with open_lmdb(self.path).begin() as txn:
                data = self._get(txn, f'image-{index:09d}')
            if data is None:
                raise DatasetError(f'{self.path}: sample {index} has a label but no image-{index:09d} key')
            img = decode_image(data)
            if img is None:
                raise DatasetError(f'{self.path}: image {index} (image-{index:09d}) cannot be decoded')
            return self._preprocess(img, None), self._target(self.texts[i])
        rng = self._rng(i)
        problem = ''
        for _ in range(MAX_REPLACE_TRIES):
            img, text, problem = self._load(index)
            if problem:
                self._report_replaced(index, problem)
            elif min(img.shape[:2]) <= SMALL_SIDE:
                h, w = img.shape[:2]
                problem = f'{w} x {h} px, a side of {SMALL_SIDE} px or less'
                self._report_replaced(index, problem, small=True)
            else:
                return self._preprocess(img, rng), self._target(text)
            index = int(rng.integers(1, self.num_samples + 1))
        raise DatasetError(f'{self.path}: {MAX_REPLACE_TRIES} samples in a row were unusable (the last: {problem})')

    def __repr__(self) -> str:
        mode = 'train' if self.is_training else 'test'
        return f'{type(self).__name__}({self.path!r}, {mode}, {len(self)} samples)'


def dataset_kwargs(config: Any, is_training: bool) -> dict[str, Any]:
    """ImageDataset keyword arguments from a Config's `dataset_*` (and `global_seed`) keys.

    Test labels keep their case when either `case_sensitive` or `eval_case_sensitive` is set (the metric
    lower-cases both sides itself when evaluation is case-insensitive); the charset may still lower-case them.
    """
    case_sensitive = config.dataset_case_sensitive or (not is_training and config.dataset_eval_case_sensitive)
    return dict(img_h=config.dataset_image_height, img_w=config.dataset_image_width, data_aug=config.dataset_data_aug,
                case_sensitive=bool(case_sensitive), multiscales=config.dataset_multiscales,
                smooth_label=is_training and config.dataset_smooth_label, smooth_factor=config.dataset_smooth_factor,
                seed=config.global_seed)


def get_dataset(roots: Sequence[str | os.PathLike], charset: CharsetMapper, is_training: bool,
                **kwargs: Any) -> ConcatDataset:
    """One ConcatDataset of an ImageDataset per root, in the given order (`.datasets[i].name` names each)."""
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    if not roots:
        raise DatasetError('no dataset roots given')
    return ConcatDataset([ImageDataset(root, charset, is_training, **kwargs) for root in roots])


def named_test_sets(roots: Sequence[str | os.PathLike], charset: CharsetMapper,
                    **kwargs: Any) -> dict[str, ImageDataset]:
    """The evaluation sets {root folder name: ImageDataset}, in the given order; the names must differ."""
    named: dict[str, ImageDataset] = {}
    for ds in get_dataset(roots, charset, False, **kwargs).datasets:
        if ds.name in named:
            raise DatasetError(f'two test roots share the name {ds.name!r}: {named[ds.name].path}, {ds.path}')
        named[ds.name] = ds
    return named
