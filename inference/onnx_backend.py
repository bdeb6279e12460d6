"""The ONNX Runtime backend: a vision model exported once per checkpoint, cached beside it, run by onnxruntime.

`onnx_model(model, config, checkpoints)` returns an `OrtVision`, an nn.Module that takes the same normalised
N x 3 x H x W batch as BaseVision and returns the same `logits`, `attn_scores` and `pt_lengths`, so demo.py and the
test phase keep one preprocessing and decoding path and only swap the module that maps a batch to logits.

The graph is cached as `<checkpoint stem>.ort-<key>.onnx` beside the (last) checkpoint, with a sidecar
`<same>.json` that holds the whole key: the checkpoints' sha256, the export settings (opset, quantisation,
exporter batch), the config keys that shape the graph, a hash of the model code in modules/ and the torch and
onnxruntime versions. A cache is used only when its sidecar holds the same key and the graph file's sha256, and
onnxruntime loads and runs it; anything else is rebuilt. Where the checkpoint's folder is not writable the cache
goes to a per-user folder (`$XDG_CACHE_HOME` or `~/.cache`, then `conclr-abinet/onnx`), said in one log line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from configuration import REPO_ROOT, Config
from inference.onnx_export import DEFAULT_OPSET, EXPORT_BATCH, INPUT_NAME, export_onnx
from modules.decoding import pt_lengths
from runtime.atomic_file import atomic_open, write_json_atomically
from runtime.checkpoint import file_sha256

BACKENDS = ('pytorch', 'onnxruntime')
QUANTIZE = ('int8',)
CACHE_FORMAT = 1  # raise when the cache layout or the export recipe changes: every older cache is then rebuilt
# Config keys that change the exported graph (besides the weights): the vision model's shape and the input size.
GRAPH_KEY_PREFIXES = ('model_vision_', 'dataset_image_height', 'dataset_image_width', 'dataset_max_length')
GRAPH_KEY_EXCLUDED = ('model_vision_checkpoint', 'model_vision_loss_weight', 'model_vision_dropout',
                      'model_vision_fast_dropout')  # not part of the eval-mode graph
# A freshly exported float32 graph must agree with PyTorch on a probe batch to this fraction of the largest logit.
EXPORT_TOLERANCE = 1e-3
INT8_OPS = ('MatMul', 'Gemm')  # dynamic quantisation: weights int8, activations quantised per call
USER_CACHE = 'conclr-abinet/onnx'


class OnnxBackendError(RuntimeError):
    """The ONNX Runtime backend cannot run: onnxruntime missing, the export failed, or ORT cannot run the graph."""


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


def require_onnxruntime() -> Any:
    """The onnxruntime module, or an OnnxBackendError saying it is not installed."""
    try:
        import onnxruntime
    except ImportError as e:
        raise OnnxBackendError(f'--backend onnxruntime: onnxruntime is not installed ({_one_line(e)}); install it '
                               '(it is in requirements.txt) or use --backend pytorch') from None
    return onnxruntime


def model_code_hash() -> str:
    """sha256 over the model code (modules/*.py): a change to it makes every cached graph stale."""
    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / 'modules').glob('*.py')):
        digest.update(path.name.encode() + b'\0' + path.read_bytes() + b'\0')
    return digest.hexdigest()


def graph_config(config: Config) -> dict[str, Any]:
    """The config keys that shape the exported graph."""
    return {k: v for k, v in sorted(config.items())
            if k.startswith(GRAPH_KEY_PREFIXES) and k not in GRAPH_KEY_EXCLUDED}


def cache_key(config: Config, checkpoints: Sequence[str | os.PathLike], quantize: str | None = None,
              opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Everything the cached graph depends on; equal keys mean the same graph."""
    key = {'format': CACHE_FORMAT, 'checkpoints_sha256': [file_sha256(p) for p in checkpoints],
           'opset': opset, 'quantize': quantize, 'export_batch': EXPORT_BATCH, 'constant_folding': True,
           'config': graph_config(config), 'model_code': model_code_hash(), 'torch': torch.__version__}
    if quantize:
        key['onnxruntime'] = require_onnxruntime().__version__  # its quantisation tool writes the int8 graph
    return json.loads(json.dumps(key, sort_keys=True, default=str))  # as the sidecar stores it


def key_hash(key: dict[str, Any]) -> str:
    """A short hex name for a key (part of the cache file name)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def user_cache_dir() -> Path:
    """The per-user cache folder used when the checkpoint's folder is read-only."""
    base = os.environ.get('XDG_CACHE_HOME') or str(Path.home() / '.cache')
    return Path(base) / USER_CACHE


def cache_paths(folder: Path, checkpoint: str | os.PathLike, key: dict[str, Any]) -> tuple[Path, Path]:
    """(graph file, sidecar JSON) of `key` for `checkpoint` in `folder`."""
    name = f'{Path(checkpoint).stem}.ort-{key_hash(key)}'
    return folder / f'{name}.onnx', folder / f'{name}.json'


def can_write(folder: Path) -> bool:
    """Whether a file can be created in `folder` (created if missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def session_options(threads: int | None = None) -> Any:
    """ORT session options: every graph optimisation, sequential execution, `threads` intra-op threads (default
    torch's thread count, which follows OMP_NUM_THREADS and torch.set_num_threads), memory pattern on."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.enable_mem_pattern = True
    options.enable_cpu_mem_arena = True
    options.log_severity_level = 3  # errors only: no warnings about unused initialisers on stderr
    return options


def create_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of the graph at `path`."""
    ort = require_onnxruntime()
    return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=['CPUExecutionProvider'])


class OrtVision(nn.Module):
    """An onnxruntime session behind BaseVision's interface: images N x 3 x H x W -> {'logits', 'attn_scores',
    'pt_lengths'} (CPU tensors; pt_lengths computed from the logits by the same code as BaseVision's)."""

    def __init__(self, session: Any, path: Path | None = None):
        super().__init__()
        self.session = session
        self.path = path

    def forward(self, images: torch.Tensor, *args: Any) -> dict[str, torch.Tensor]:
        """One batch through the graph (further arguments are ignored, as BaseVision does)."""
        batch = np.ascontiguousarray(images.detach().to('cpu', torch.float32).numpy())
        try:
            logits, attn_scores = self.session.run(['logits', 'attn_scores'], {INPUT_NAME: batch})
        except Exception as e:  # onnxruntime raises its own exception types (Fail, NotImplemented, ...)
            raise OnnxBackendError(f'ONNX Runtime cannot run the exported graph {self.path}: {_one_line(e)}') from None
        logits_t = torch.from_numpy(logits)
        return {'logits': logits_t, 'attn_scores': torch.from_numpy(attn_scores), 'pt_lengths': pt_lengths(logits_t)}


def _probe(image_size: tuple[int, int], batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, *image_size, generator=torch.Generator().manual_seed(0))


def _valid_cache(graph: Path, sidecar: Path, key: dict[str, Any]) -> bool:
    """Whether the sidecar holds `key` and the graph file's sha256 (nothing else is trusted)."""
    try:
        meta = json.loads(sidecar.read_text(encoding='utf-8'))
        return (isinstance(meta, dict) and meta.get('key') == key and graph.is_file()
                and meta.get('onnx_sha256') == file_sha256(graph))
    except (OSError, ValueError):
        return False


def quantize_int8(source: Path, target: Path) -> Path:
    """Dynamic int8 quantisation of the graph's MatMul and Gemm weights (onnxruntime.quantization)."""
    require_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # the tool advises (on the root logger) a pre-processing step; not needed here
    try:
        quantize_dynamic(str(source), str(target), op_types_to_quantize=list(INT8_OPS),
                         weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    return target


def build_graph(model: nn.Module, config: Config, target: Path, quantize: str | None, opset: int) -> None:
    """Export `model`, check it against PyTorch (float32), quantise if asked, and move the result to `target`."""
    size = (config.dataset_image_height, config.dataset_image_width)
    with tempfile.TemporaryDirectory(prefix='onnx_export_') as tmp:
        exported = Path(tmp) / 'model.onnx'
        try:
            export_onnx(model, exported, size, opset)
        except Exception as e:
            raise OnnxBackendError(f'--backend onnxruntime: exporting the model to ONNX failed: '
                                   f'{type(e).__name__}: {_one_line(e)}') from None
        session = _session_or_error(exported, size)
        probe = _probe(size)
        with torch.no_grad():
            reference = model.eval()(probe)['logits']
        got = OrtVision(session, exported)(probe)['logits']
        scale = max(float(reference.abs().max()), 1e-12)
        error = float((got - reference).abs().max()) / scale
        if not error <= EXPORT_TOLERANCE:
            raise OnnxBackendError(f'--backend onnxruntime: the exported graph differs from PyTorch (largest logit '
                                   f'difference {error:.3g} of the largest logit, tolerance {EXPORT_TOLERANCE:g})')
        if quantize == 'int8':
            quantized = Path(tmp) / 'model.int8.onnx'
            try:
                quantize_int8(exported, quantized)
            except Exception as e:
                raise OnnxBackendError(f'--backend onnxruntime: int8 quantisation failed: {type(e).__name__}: '
                                       f'{_one_line(e)}') from None
            exported = quantized
        with atomic_open(target) as f, open(exported, 'rb') as src:
            for block in iter(lambda: src.read(1 << 20), b''):
                f.write(block)


def _session_or_error(path: Path, image_size: tuple[int, int]) -> Any:
    """A session that has run a probe batch, or an OnnxBackendError saying ORT cannot load or run the graph."""
    try:
        session = create_session(path)
    except OnnxBackendError:
        raise
    except Exception as e:
        raise OnnxBackendError(f'--backend onnxruntime: ONNX Runtime cannot load the exported graph: '
                               f'{_one_line(e)}') from None
    OrtVision(session, path)(_probe(image_size, 1))  # an operator ORT cannot run fails here, with one line
    return session


def _load_cached(graph: Path, sidecar: Path, key: dict[str, Any], image_size: tuple[int, int]) -> Any | None:
    """A session of a valid cache entry, or None (missing, stale, corrupt, or ORT fails to load or run it)."""
    if not _valid_cache(graph, sidecar, key):
        return None
    try:
        return _session_or_error(graph, image_size)
    except OnnxBackendError:
        return None


def onnx_model(model: nn.Module, config: Config, checkpoints: str | os.PathLike | Sequence[str | os.PathLike],
               quantize: str | None = None, opset: int = DEFAULT_OPSET,
               log: Callable[[str], None] | None = None) -> OrtVision:
    """`model` (loaded from `checkpoints`, in eval mode) as an OrtVision, exported once and cached beside the last
    checkpoint (or in the per-user cache when that folder is read-only); a missing, stale or corrupt cache is
    rebuilt. Raises OnnxBackendError (one line) when onnxruntime is missing, the export fails or ORT cannot run it."""
    log = log or (lambda line: None)
    require_onnxruntime()
    if quantize not in (None, *QUANTIZE):
        raise OnnxBackendError(f'--quantize {quantize!r}: expected one of {", ".join(QUANTIZE)}')
    paths = [checkpoints] if isinstance(checkpoints, (str, os.PathLike)) else list(checkpoints)
    if not paths:
        raise OnnxBackendError('--backend onnxruntime needs a checkpoint to key its cache on')
    key = cache_key(config, paths, quantize, opset)
    size = (config.dataset_image_height, config.dataset_image_width)
    home = Path(paths[-1]).resolve().parent
    folders = [home, user_cache_dir()]
    for folder in folders:
        graph, sidecar = cache_paths(folder, paths[-1], key)
        session = _load_cached(graph, sidecar, key, size)
        if session is not None:
            log(f'onnxruntime: using the cached graph {graph}')
            return OrtVision(session, graph)
    folder = home
    if not can_write(home):
        folder = user_cache_dir()
        if not can_write(folder):
            raise OnnxBackendError(f'--backend onnxruntime: neither {home} nor {folder} is writable; the exported '
                                   'graph has nowhere to go')
        log(f'onnxruntime: {home} is not writable; caching the exported graph in {folder}')
    graph, sidecar = cache_paths(folder, paths[-1], key)
    sidecar.unlink(missing_ok=True)  # a graph without its sidecar is never trusted, even if a build stops midway
    build_graph(model, config, graph, quantize, opset)
    session = _session_or_error(graph, size)
    write_json_atomically(sidecar, {'key': key, 'onnx_sha256': file_sha256(graph)})
    log(f'onnxruntime: exported {"int8 " if quantize else ""}graph {graph}')
    return OrtVision(session, graph)
