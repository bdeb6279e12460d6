"""Side-by-side speed of this project and official ABINet-Vision in one process, on the same weights and batch.

    python -m tools.official_abinet --official ../ABINet [--batch 16] [--rounds 3] [--infer_batch 64]

`--official` is a checkout of https://github.com/FangShancheng/ABINet (the README's comparison used 4223b24); it is
read, never copied or changed. Both code bases own the top-level names `modules`, `utils` and `losses`, so the
official ones are imported with their folder first on sys.path and the project's entries of sys.modules set aside,
then put back. The two models are checked to give the same logits before anything is timed; the training step is
forward, loss (official MultiLosses / this project's loss), backward, gradient clipping at 20 and an Adam step, as
both trainers do; steps are timed in alternation (round k runs each once) and the medians compared.
"""

from __future__ import annotations

import argparse

import torch

from tools.benchmark.official import compare


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--official', required=True, help='a checkout of FangShancheng/ABINet')
    p.add_argument('--batch', type=int, default=16, help='training batch')
    p.add_argument('--infer_batch', type=int, default=64, help='inference batch')
    p.add_argument('--rounds', type=int, default=3, help='timed rounds (medians)')
    args = p.parse_args(argv)
    result = compare(args.official, args.batch, args.infer_batch, args.rounds)
    print(f'full-size ABINet-Vision on {torch.get_num_threads()} CPU threads, torch {torch.__version__}')
    for kind, n in (('train', args.batch), ('infer', args.infer_batch)):
        print(f'{kind} (batch {n}): official {result[kind + ".official_img_s"]:.2f} img/s, project '
              f'{result[kind + ".project_img_s"]:.2f} img/s, project / official {result[kind + ".ratio"]:.3f}x')


if __name__ == '__main__':
    main()
