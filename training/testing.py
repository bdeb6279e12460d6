"""The test phase: every test root evaluated on its own and together, with predictions and attention pictures."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from callbacks.amp import MixedPrecision, amp_mode
from configuration import Config
from dataset import ImageDataset, dataset_kwargs, named_test_sets
from evaluation.loop import EvalResult, evaluate, format_table, table_rows, write_csv
from inference.onnx_backend import OnnxBackendError, onnx_model
from inference.pictures import attention_maps, attention_picture, denormalize, save_rgb
from modules.decoding import decode_logits
from modules.memory_format import enable_cudnn_autotune
from runtime.checkpoint import choose_checkpoint
from runtime.distributed import DistEnv, current_env, setup_rank_logger
from runtime.matmul_precision import set_tf32
from training.builders import build_learner, build_model
from training.loaders import test_loader
from training.run_log import log_config_notes
from training.validate import validate_config
from utils import CharsetMapper

ATTENTION_PICTURES_PER_SET = 16


def test(config: Config, device: torch.device, image_only: bool = False,
         env: DistEnv | None = None, backend: str = 'pytorch', quantize: str | None = None) -> list[dict[str, Any]]:
    """Evaluate every test root on its own and together; print and save the table and per-sample predictions.

    Under torchrun every process evaluates its share of each set; rank 0 writes the results, which equal a
    single-process run's exactly. `backend` 'onnxruntime' runs the model's forward pass in ONNX Runtime (CPU;
    `quantize` 'int8' for int8 matrix products); data, decoding, metrics and loss stay the same code.
    """
    env = env or current_env(device)
    if backend == 'onnxruntime' and device.type != 'cpu':
        raise OnnxBackendError(f'--backend onnxruntime runs on the CPU, not on {device}')
    validate_config(config)
    chosen, why = checkpoint_to_test(config)  # before the data opens: a missing best checkpoint is the first error
    amp = amp_mode(config.training_amp, device)
    charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
    test_sets = named_test_sets(config.dataset_test_roots, charset, **dataset_kwargs(config, False))
    logger = setup_rank_logger(config.workdir, 'test', env)  # after the data opened, as in train()
    log_config_notes(config, env, logger)
    for ds in test_sets.values():
        if ds.missing_note() and env.is_main:
            logger.warning(ds.missing_note())
    if chosen != config.model_checkpoint:
        config.model_checkpoint = chosen
    logger.info(why)
    model = build_model(config)
    if backend == 'onnxruntime':
        checkpoints = [p for p in (config.model_vision_checkpoint, config.model_checkpoint) if p]
        model = onnx_model(model.eval(), config, checkpoints, quantize, log=logger.info)
    enable_cudnn_autotune(device)
    set_tf32(config.training_tf32, device)
    logger.info(f'evaluating {config.model_checkpoint} on {", ".join(test_sets)}'
                + (f' with {env.world_size} processes' if env.distributed else '')
                + ('' if backend == 'pytorch' else f' in ONNX Runtime{" (int8)" if quantize else ""}'))
    loaders = {name: test_loader(config, ds, device) for name, ds in test_sets.items()}
    first = next(iter(loaders.values())).dl
    learn = build_learner(config, model, first, first, device)
    if amp and backend == 'pytorch':
        learn.callbacks.append(MixedPrecision(learn, amp, device.type))
    elif amp:
        logger.info(f'training.amp {config.training_amp} does not apply: ONNX Runtime runs the float32 graph')
    results = [evaluate(learn, dl, charset, config.dataset_eval_case_sensitive, record=True, name=name,
                        left_out=test_sets[name].num_left_out) for name, dl in loaders.items()]
    rows = table_rows(results)
    if env.is_main:  # only once every set is evaluated: a failed test run leaves the earlier results in place
        set_aside_previous_results(config.workdir, logger)
        for name, result in zip(loaders, results):
            _dump_predictions(config.workdir / 'predictions' / f'{name}.tsv', result)
            if not image_only:
                _attention_pictures(model, test_sets[name], charset, config.workdir / 'attention' / name, device)
        logger.info('results\n' + format_table(rows))
        write_csv(rows, config.workdir / 'test_results.csv')
        logger.info(f'wrote {config.workdir / "test_results.csv"} and per-sample predictions in '
                    f'{config.workdir / "predictions"}' + ('' if image_only else f', attention pictures in '
                                                            f'{config.workdir / "attention"}'))
    return rows


def best_checkpoint(config: Config) -> Path:
    """The run's best checkpoint, `<global.workdir>/<global.name>/best-<global.name>.pth`."""
    return config.workdir / f'best-{config.global_name}.pth'


def checkpoint_to_test(config: Config) -> tuple[str, str]:
    """The checkpoint the test phase evaluates and why: --checkpoint (or a model.checkpoint set in code); else the
    run's best when it exists (model.checkpoint in the config file is where fine-tuning started); else
    model.checkpoint; an error naming the best's path when there is none."""
    configured = config.model_checkpoint or None
    given = configured if config.source_of('model_checkpoint') not in (None, config.path) else None
    return choose_checkpoint(given, configured, best_checkpoint(config))


TEST_OUTPUTS = ('test_results.csv', 'predictions', 'attention')


def set_aside_previous_results(workdir: Path, logger: logging.Logger) -> list[Path]:
    """Rename the outputs of an earlier test phase in `workdir` to `<name>-<its time>` (say so in the log), so a
    new test run never overwrites them; returns the new names."""
    found = [workdir / name for name in TEST_OUTPUTS if (workdir / name).exists()]
    if not found:
        return []
    stamp = time.strftime('%Y%m%d-%H%M%S', time.localtime(found[0].stat().st_mtime))
    kept = []
    for path in found:
        target, k = path.with_name(f'{path.stem}-{stamp}{path.suffix}'), 1
        while target.exists():
            target, k = path.with_name(f'{path.stem}-{stamp}-{k}{path.suffix}'), k + 1
        kept.append(path.rename(target))
    logger.info(f'an earlier test run left results here; kept them as {", ".join(p.name for p in kept)}')
    return kept


def _dump_predictions(path: Path, result: EvalResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        f.write('index\tground_truth\tprediction\tconfidence\tcorrect\n')
        for i, (gt, pred, conf) in enumerate(result.records):
            correct = pred == gt if result.metrics.case_sensitive else pred.lower() == gt.lower()
            f.write(f'{i}\t{gt}\t{pred}\t{conf:.4f}\t{int(correct)}\n')


@torch.no_grad()
def _attention_pictures(model: nn.Module, dataset: ImageDataset, charset: CharsetMapper, folder: Path,
                        device: torch.device) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    count = min(ATTENTION_PICTURES_PER_SET, len(dataset))
    images = torch.stack([dataset[i][0] for i in range(count)])  # stays on the host for the pictures
    model.eval()
    output = model(images.to(device))
    texts, _, _ = decode_logits(output['logits'], charset)
    maps = attention_maps(output['attn_scores'])  # one device copy for the batch
    for i in range(count):
        picture = attention_picture(denormalize(images[i]), maps[i], texts[i])
        save_rgb(folder / f'{i:04d}.png', picture)


