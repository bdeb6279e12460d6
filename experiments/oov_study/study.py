"""The whole study, resumable: the vocabulary sweep, the ablation arms over their seeds, the equal-wall-clock
baseline runs, then the report. Every finished run is cached in the output folder (runs.py); the folder
belongs to one preset (study.json holds its fingerprint) and a different preset is refused.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from configuration import REPO_ROOT, Config
from experiments.oov_study import figures, report, runs, wall_clock
from experiments.oov_study.data import SYNTHETIC_SETS, build_data, find_benchmarks, lmdb_digest, read_vocabulary
from experiments.oov_study.preset import ExperimentError, Preset, definition_fingerprint
from runtime.atomic_file import write_json_atomically, write_text_atomically
from runtime.run_lock import LOCK_NAME, RunLock, RunLockError, describe_owner, live_owner
from runtime.stop_signal import StopSignal
from training.builders import build_model, is_conclr
from utils import tune_malloc

STUDY_FILE = 'study.json'
TSNE_FILE = 'tsne.json'  # the drawn t-SNE pair: seed, run ids, images, figure names


class Progress:
    """Prints progress lines and appends them to <output>/experiment.txt."""

    def __init__(self, output: Path):
        self.path = output / 'experiment.txt'

    def __call__(self, message: str) -> None:
        line = f'[{time.strftime("%Y-%m-%d %H:%M:%S")} oov-study] {message}'
        print(line, flush=True)
        with open(self.path, 'a', encoding='utf-8') as f:
            f.write(line + '\n')


def claim_folder(output: Path, preset: Preset) -> bool:
    """Make `output` this preset's study folder; True when it already was (a resumed study). A folder of another
    preset, or a non-empty folder that is no study's, is an ExperimentError."""
    marker = output / STUDY_FILE
    if marker.is_file():
        made = json.loads(marker.read_text(encoding='utf-8'))
        if made.get('fingerprint') == preset.fingerprint():
            return True
        if definition_fingerprint(made) != preset.definition_fingerprint():
            raise ExperimentError(f'{output} holds a study of another preset ({made.get("preset")}, different '
                                  f'settings from {preset.path}): give a new --output')
        # the same runs, other seed lists: finished runs are reused and the new seeds planned
        write_json_atomically(marker, {'preset': preset.path, 'fingerprint': preset.fingerprint(), **preset.tree})
        return True
    if output.exists() and any(p.name != LOCK_NAME for p in output.iterdir()):
        raise ExperimentError(f'{output} is not empty and holds no {STUDY_FILE}: give a new --output')
    output.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(preset.path, output / 'preset.yaml')
    write_json_atomically(marker, {'preset': preset.path, 'fingerprint': preset.fingerprint(), **preset.tree})
    return False


def check_arms(preset: Preset, device: torch.device) -> int:
    """Build every arm's project config and model before any data is made; returns the training batch size."""
    baseline = preset.experiment['baseline']
    with tempfile.TemporaryDirectory() as tmp:
        place = runs.RunPlace(Path(tmp), Path(tmp) / 'train', (Path(tmp) / 'test',), (), (), frozenset(), 100)
        batches = set()
        for name in preset.arms:
            spec = runs.RunSpec(name, 0, preset.steps, 1, preset.arm_tree(name))
            config = Config(runs.write_run_config(spec, place, preset.experiment['curve_points'], None))
            model = build_model(config)
            if name == baseline and is_conclr(model):
                raise ExperimentError(f'{preset.path}: the baseline arm {name!r} must not be a ConCLR model')
            batches.add(config.dataset_train_batch_size)
            if config.global_malloc_tune:  # as main.py does; before any training, for every arm alike
                tune_malloc()
            warm_up(model, config, device)
    if len(batches) != 1:
        raise ExperimentError(f'{preset.path}: every arm needs the same dataset.train.batch_size, got {batches}')
    return batches.pop()


def warm_up(model: torch.nn.Module, config: Config, device: torch.device) -> None:
    """One forward and backward pass on a dummy batch, so that one-time start-up costs (CUDA context, library
    handles, kernel selection) do not land in the first run's timed steps."""
    model = model.to(device).train()
    images = torch.zeros(2, 3, config.dataset_image_height, config.dataset_image_width, device=device)
    output = model(images)
    output = output[0] if isinstance(output, list) else output
    output['logits'].float().mean().backward()
    model.to('cpu')


def environment(device: torch.device) -> dict[str, Any]:
    """Hardware and software of this invocation."""
    import fastai

    cpu_model = platform.processor()
    if Path('/proc/cpuinfo').is_file():
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu_model = line.split(':', 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    return {'cpu_count': os.cpu_count(), 'cpus_usable': usable, 'cpu_model': cpu_model,
            'torch_threads': torch.get_num_threads(), 'device': str(device),
            'device_name': torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_model,
            'torch': torch.__version__, 'fastai': fastai.__version__, 'python': platform.python_version()}


def data_builds(output: Path) -> dict[str, dict[str, Any]]:
    """The digests of every rendered |V| in `output` ('v100' -> {'digest', 'test_digests'}), from its manifest."""
    builds = {}
    for path in sorted((output / 'data').glob('v*/manifest.json')):
        manifest = json.loads(path.read_text(encoding='utf-8'))
        builds[path.parent.name] = {'digest': manifest.get('digest'), 'test_digests': manifest.get('test_digests')}
    return builds


def choose_vocab_size(sweep: dict[str, Any], min_gap: float, min_iv: float) -> tuple[int, str]:
    """The largest swept |V| whose mean IV - OOV-words gap and IV cwr reach the thresholds; else the |V| of the
    largest gap. Returns (|V|, why)."""
    rows = {int(n): row for n, row in sweep.items()}
    good = [n for n, row in rows.items() if row['gap']['mean'] >= min_gap and row['iv']['mean'] >= min_iv]
    if good:
        return max(good), 'the criterion held'
    best = max(rows, key=lambda n: rows[n]['gap']['mean'])
    return best, 'no swept size met the criterion: the study uses the size of the largest gap'


class Study:
    """The runs of one preset in one output folder, trained (or loaded from the cache) in a fixed order."""

    def __init__(self, preset: Preset, output: Path, device: torch.device, say: Callable[[str], None],
                 benchmarks: list[Path], batch: int, deadline: float | None = None, train: bool = True,
                 stop: StopSignal | None = None):
        self.preset, self.e, self.output, self.device, self.say = preset, preset.experiment, output, device, say
        self.stop = stop  # the command's signal handlers: training stops at a step boundary
        self.benchmarks, self.batch = benchmarks, batch
        self.deadline = deadline  # time.monotonic() by which every run this invocation starts should have ended
        self.trained = 0  # runs trained (not read back) by this invocation
        self.train = train  # False: report only, from the finished runs
        self.superseded: dict[str, str] = {}  # run id of a superseded run -> its retrain's run id
        self.superseded_why: dict[str, str] = {}  # run id of a superseded run -> why (runs.superseded_why)
        self.asked = runs.retrain_requests(output)  # finished runs asked to be trained again (--retrain)
        self.environment: dict[str, Any] | None = None  # report only: the environment of the runs' own report
        self.builds: dict[str, Any] = {}  # report only: the data builds of that report (their data may be gone)
        self.order: list[str] = []  # report only: the run order of that report (a rewrite moves no run)
        old = output / 'results.json'
        if not train and old.is_file():
            written = json.loads(old.read_text(encoding='utf-8'))
            self.environment, self.order = written.get('environment'), list(written.get('runs', {}))
            self.builds = written.get('data', {})
        self.places: dict[int, runs.RunPlace] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.vocab_size: int | None = self.e['vocab_size']
        self.why = 'given by the preset' if self.vocab_size is not None else 'not chosen yet: the sweep is not finished'
        self.sweep_rows: dict[int, dict[str, Any]] = {}
        tsne = output / TSNE_FILE
        self.tsne: dict[str, Any] = json.loads(tsne.read_text(encoding='utf-8')) if tsne.is_file() else {}
        self.told: set[str] = set()  # run ids already said to wait for the next invocation

    def place(self, size: int) -> runs.RunPlace:
        """The data of |V| = size (rendered on first use) and the sets its runs are evaluated on."""
        if size not in self.places:
            folder = self.output / 'data' / f'v{size}'
            manifest = build_data(self.e, size, folder, self.say)
            self.check_same_renders(size, folder, manifest)
            if self.e['train_images'] < self.batch:
                raise ExperimentError(f'{self.e["train_images"]} training images are fewer than one batch')
            self.places[size] = runs.RunPlace(
                self.output, folder / 'train', tuple(folder / f'{n}_curve' for n in SYNTHETIC_SETS),
                tuple(folder / n for n in SYNTHETIC_SETS) + tuple(self.benchmarks),
                tuple(b.name for b in self.benchmarks), frozenset(read_vocabulary(folder)),
                self.e['train_images'] // self.batch, manifest['digest'],
                manifest.get('test_digests') or {n: lmdb_digest(folder / n) for n in SYNTHETIC_SETS})
        return self.places[size]

    def check_same_renders(self, size: int, folder: Path, manifest: dict[str, Any]) -> None:
        """Refuse renders of |V| = size other than those this folder's finished runs trained on: on another machine
        (other fonts) the same seed renders other images, and runs trained on them would confound every comparison.
        The new renders are removed, so a run after installing the fonts renders again."""
        recorded = report.data_digests(runs.finished_runs(self.output)).get(size)
        if not recorded or manifest['digest'] in recorded:
            return
        shutil.rmtree(folder)
        theirs = ', '.join(sorted(d[:12] for d in recorded))
        fonts = manifest.get('fonts', '?')
        raise ExperimentError(
            f'the renders of |V| = {size} made here (sha256 {manifest["digest"][:12]}, {fonts} fonts) '
            f'differ from those the finished runs in {self.output} trained on ({theirs}): this machine has other '
            'fonts; install those of the first machine (bash tools/install_render_assets.sh) and run again '
            f'(the new renders were removed from {folder})')

    def fits(self, spec: runs.RunSpec) -> bool:
        """Whether `spec` should end before the deadline: always without one; without an estimate only as this
        invocation's first training run (so every invocation makes progress and no unknown run is cut off)."""
        if self.deadline is None:
            return True
        estimate = runs.estimate_seconds(spec, runs.finished_runs(self.output), runs.steps_done(self.output, spec))
        left = self.deadline - time.monotonic()
        if estimate is None and not self.trained:
            return True
        if estimate is not None and estimate <= left:
            return True
        if spec.run_id in self.told:
            return False
        self.told.add(spec.run_id)
        need = 'no finished run of its arm or model to estimate it by' if estimate is None else \
            f'it needs about {estimate / 60:.0f} min'
        self.say(f'{spec.run_id} waits for the next invocation: {need}, {max(left, 0) / 60:.0f} min of the time '
                 'limit are left')
        return False

    def cached(self, spec: runs.RunSpec) -> tuple[runs.RunSpec, dict[str, Any] | None]:
        """The spec that stands for `spec` and its finished record (or None): a finished run without a data digest,
        or one asked to be trained again, is kept in the records, marked superseded, and its retrain (run id ending
        -r1) stands for it."""
        record = runs.finished_run(self.output, spec)
        why = runs.superseded_why(record, self.asked) if record is not None and not spec.retrain else None
        if why is not None:
            self.records[record['run_id']] = record
            spec = replace(spec, retrain=1)
            self.superseded[record['run_id']] = spec.run_id
            self.superseded_why[record['run_id']] = why
            record = runs.finished_run(self.output, spec)
        return spec, record

    def run(self, spec: runs.RunSpec) -> dict[str, Any] | None:
        """A finished run's cached record, or train it; None when it would not end before the deadline (or only the
        report is written). A superseded run is retrained under a new run id. The report is rewritten after every
        run."""
        spec, record = self.cached(spec)
        if record is None:
            if not self.train or not self.fits(spec):
                return None
            self.trained += 1
            record = runs.run_or_load(spec, self.place(spec.vocab_size), self.e, self.device, self.say, self.stop)
            self.records[spec.run_id] = record
            self.write()
        self.records[spec.run_id] = record
        return record

    def spec(self, arm: str, seed: int, size: int, steps: int | None = None, kind: str = 'steps') -> runs.RunSpec:
        """The spec of one run of this study."""
        return runs.RunSpec(arm, seed, steps or self.preset.steps, size, self.preset.arm_tree(arm), kind)

    def sweep(self) -> None:
        """The baseline alone at every swept |V|; then |V| is chosen unless the preset gives it."""
        baseline = self.e['baseline']
        for size in self.e['sweep_vocab_sizes']:
            # until its retrain exists, a superseded run still shows in the sweep (it chose |V|; results.md says so)
            records = {seed: self.run(self.spec(baseline, seed, size))
                       or self.records.get(self.spec(baseline, seed, size).run_id) for seed in self.e['sweep_seeds']}
            if None in records.values():
                continue
            self.sweep_rows[size] = {
                'seeds': len(records), 'renders_per_word': self.e['train_images'] / size,
                **{key: report.stat(records, value) for key, value in (
                    ('iv', lambda r: r['final']['iv']['cwr']), ('oov_words', lambda r: r['final']['oov_words']['cwr']),
                    ('gap', lambda r: report.gap_value(r, 'oov_words', 'cwr')))}}
        if self.vocab_size is None and len(self.sweep_rows) == len(self.e['sweep_vocab_sizes']):
            self.vocab_size, self.why = choose_vocab_size(self.sweep_rows, self.e['min_gap'], self.e['min_iv'])
            self.say(f'|V| = {self.vocab_size}: {self.why}')

    def wall_seeds(self) -> list[int]:
        """Seeds of the equal-wall-clock runs."""
        if not self.e['equal_wall_clock']:
            return []
        arms = self.preset.arms
        both = [s for s in arms[self.e['reference']].seeds if s in arms[self.e['baseline']].seeds]
        return self.e['wall_clock_seeds'] if self.e['wall_clock_seeds'] is not None else both

    def ablation(self) -> None:
        """Every arm over its seeds at the chosen |V|, seed by seed; each seed's equal-wall-clock run after it.
        Runs that would not end before the deadline are passed over for later ones that would."""
        size, baseline, reference = self.vocab_size, self.e['baseline'], self.e['reference']
        if size is None:  # the sweep is not finished
            return
        self.load_finished(size)
        for seed in sorted({s for arm in self.preset.arms.values() for s in arm.seeds}):
            for arm in self.preset.arms.values():
                if seed in arm.seeds:
                    self.run(self.spec(arm.name, seed, size))
            if seed in self.wall_seeds():
                base = self.run(self.spec(baseline, seed, size))
                ref = self.run(self.spec(reference, seed, size))
                if base is None or ref is None:
                    continue
                steps = self.wall_steps(base, ref, measure=self.train)
                if steps is not None:
                    self.run(self.spec(baseline, seed, size, steps, 'wall'))

    def load_finished(self, size: int) -> None:
        """Read every finished run at `size` into the records up front, so the report written after each run counts
        the runs later in the order too (equal-wall-clock runs only once their step times are saved)."""
        for arm in self.preset.arms.values():
            for seed in arm.seeds:
                _, record = self.cached(self.spec(arm.name, seed, size))
                if record is not None:
                    self.records[record['run_id']] = record
        for seed in self.wall_seeds():
            base, ref = (self.records.get(self.spec(a, seed, size).run_id) for a in (self.e['baseline'],
                                                                                      self.e['reference']))
            steps = self.wall_steps(base, ref, measure=False) if base and ref else None
            record = runs.finished_run(self.output, self.spec(self.e['baseline'], seed, size, steps, 'wall')) \
                if steps else None
            if record is not None:
                self.records[record['run_id']] = record

    def wall_steps(self, base: dict[str, Any], ref: dict[str, Any], measure: bool = True) -> int | None:
        """Steps of the baseline's equal-wall-clock run beside `ref`: the reference's steps times the ratio of the
        two models' step times, measured side by side on this machine (once; saved in wall_clock.json). None, and
        nothing said, when they are not saved yet and `measure` is False."""
        key = f'v{base["spec"]["vocab_size"]}-s{base["spec"]["seed"]}'
        times = wall_clock.saved_times(self.output).get(key)
        if times is None and not measure:
            return None
        if times is None:
            env = environment(self.device)
            times = wall_clock.measure_and_save(self.output, key, self.output / ref['config'],
                                                self.output / base['config'], self.device,
                                                f'{env["device_name"]}, torch threads: {env["torch_threads"]}')
        steps = runs.equal_wall_steps(ref['steps'], times['reference'], times['baseline'])
        if not measure:
            return steps
        self.say(f'equal wall-clock, {key}: a step takes {times["reference"]:.3f} s ({ref["spec"]["arm"]}) and '
                 f'{times["baseline"]:.3f} s ({base["spec"]["arm"]}) side by side: {steps} baseline steps')
        return steps

    def planned(self) -> list[str]:
        """Run ids of the whole study (|V| shown as '?' before the sweep chose it)."""
        ids = [self.spec(self.e['baseline'], s, n).run_id for n in self.e['sweep_vocab_sizes']
               for s in self.e['sweep_seeds']]
        size = self.vocab_size if self.vocab_size is not None else '?'
        ids += [f'v{size}-{arm.name}-s{s}' for arm in self.preset.arms.values() for s in arm.seeds]
        ids += [f'v{size}-{self.e["baseline"]}-wall-s{s}' for s in self.wall_seeds()]
        for _ in range(len(self.superseded) + 1):  # a superseded run's place goes to its retrain
            ids = [self.superseded.get(i, i) for i in ids]
        return list(dict.fromkeys(ids))

    def columns(self, kind: str) -> dict[str, dict[int, dict[str, Any]]]:
        """{column: {seed: record}} of the finished runs at the chosen |V|: the arms ('steps'), or the
        equal-wall-clock baseline beside every other arm ('wall')."""
        found: dict[str, dict[int, dict[str, Any]]] = {}
        for record in self.records.values():
            spec = record['spec']
            if spec['vocab_size'] == self.vocab_size and runs.superseded_why(record, self.asked) is None:
                name = spec['arm'] + ('_wall' if spec['kind'] == 'wall' else '')
                found.setdefault(name, {})[spec['seed']] = record
        steps = {a: found[a] for a in self.preset.arms if a in found}
        if kind == 'steps':
            return steps
        wall = f'{self.e["baseline"]}_wall'
        if wall not in found:
            return {}
        return {wall: found[wall], **{a: c for a, c in steps.items() if a != self.e['baseline']}}

    def test_sets(self) -> list[str]:
        """Synthetic sets, then each benchmark followed by its in-V and not-in-V parts."""
        return list(SYNTHETIC_SETS) + [f'{b.name}{part}' for b in self.benchmarks for part in ('', ':in', ':out')]

    def result(self) -> dict[str, Any]:
        """What results.json holds (paths relative to the output folder)."""
        sets, baseline = self.test_sets(), self.e['baseline']
        tables, samples = {}, {}
        for key, kind in (('same_steps', 'steps'), ('same_wall_clock', 'wall')):
            columns = self.columns(kind)
            if columns:
                tables[key] = report.summarise(columns, sets, f'{baseline}_wall' if kind == 'wall' else baseline)
                samples = {name: report.samples_of(columns, name) for name in sets}
        missing = [i for i in self.planned() if i not in self.records]
        return {'preset': self.preset.path, 'fingerprint': self.preset.fingerprint(), 'experiment': self.e,
                'steps': self.preset.steps, 'arms': {a.name: {'label': a.label, 'seeds': list(a.seeds)}
                                                     for a in self.preset.arms.values()},
                'vocab_size': self.vocab_size, 'sweep': {'sizes': self.sweep_rows, 'chosen': self.vocab_size,
                                                          'why': self.why},
                'test_sets': sets, 'samples': samples, 'tables': tables,
                'runs': {i: self.records[i] for i in [*self.order, *self.records] if i in self.records},
                'superseded': dict(self.superseded), 'superseded_why': dict(self.superseded_why),
                'test_digests': {i: r.get('test_digests') for i, r in self.records.items()},
                'data': {**self.builds, **data_builds(self.output)},
                'complete': not missing, 'missing': missing, 'figures': self.figures(),
                'wall_clock': wall_clock.saved_times(self.output),
                'environment': self.environment or environment(self.device),
                'run_seconds': sum(r['train_seconds'] + r['test_seconds'] for r in self.records.values())}

    def figures(self) -> dict[str, str]:
        """Draw the learning curves; {file name: description} of every figure in the folder."""
        labels = {a.name: a.label for a in self.preset.arms.values()}
        labels[f'{self.e["baseline"]}_wall'] = labels[self.e['baseline']] + ' (equal wall-clock)'
        steps, wall = self.columns('steps'), self.columns('wall')
        shown = {}
        if steps:
            figures.plot_curves(steps, labels, self.output / 'curves_steps.png')
            shown['curves_steps.png'] = 'learning curves (cwr on the curve subsets) against optimiser steps'
            both = {**steps, **{k: v for k, v in wall.items() if k not in steps}}
            figures.plot_curves(both, labels, self.output / 'curves_wallclock.png', wall_clock=True)
            shown['curves_wallclock.png'] = 'the same against training seconds, equal-wall-clock runs included'
        for name in self.tsne.get('figures', []):
            shown[name] = f't-SNE of character glimpses, {labels[self.e["baseline"]]} beside ' \
                          f'{labels[self.e["reference"]]} (seed {self.tsne["seed"]}, {self.tsne["images"]} images)'
        return shown

    def write(self) -> dict[str, Any]:
        """results.json and results.md of the runs finished so far."""
        result = self.result()
        write_json_atomically(self.output / 'results.json', result)
        write_text_atomically(self.output / 'results.md', report.markdown(result))
        return result

    def draw_tsne(self) -> None:
        """The t-SNE pair, drawn once: baseline and reference arm at their first common seed whose two final
        checkpoints are on this machine (a study continued on another machine has the runs' records, not their
        checkpoints); without one it waits for a later invocation."""
        if self.e['tsne_images'] <= 0 or self.tsne:
            return
        steps = self.columns('steps')
        base, ref = steps.get(self.e['baseline'], {}), steps.get(self.e['reference'], {})
        common = sorted(set(base) & set(ref))
        missing = {s: [r[s]['checkpoint'] for r in (base, ref) if not (self.output / r[s]['checkpoint']).is_file()]
                   for s in common}
        here = [s for s in common if not missing[s]]
        if not here:
            if common:
                self.say('the t-SNE pair waits for a seed with both final checkpoints on this machine; missing: '
                         + ', '.join(c for s in common for c in missing[s]))
            return
        seed, start = here[0], time.perf_counter()
        pair = [(self.preset.arms[self.e['baseline']].label, base[seed]),
                (self.preset.arms[self.e['reference']].label, ref[seed])]
        names = figures.tsne_pair(pair, self.output, self.output / 'data' / f'v{self.vocab_size}',
                                  self.e['tsne_images'], self.device)
        self.tsne = {'seed': seed, 'runs': [base[seed]['run_id'], ref[seed]['run_id']],
                     'images': self.e['tsne_images'], 'figures': names}
        write_json_atomically(self.output / TSNE_FILE, self.tsne)
        self.say(f't-SNE pair of seed {seed} in {time.perf_counter() - start:.1f} s')


def run_study(preset: Preset, output: Path, device: torch.device, hours: float | None = None,
              report_only: bool = False, stop: StopSignal | None = None,
              retrain: Sequence[str] = ()) -> dict[str, Any]:
    """The whole study into `output` (resumed when it already holds this preset's runs); returns results.json.
    With `hours`, only runs expected to end within that time are started; the others wait for the next call.
    With `report_only`, nothing is trained or rendered: results.json and results.md from the finished runs. With
    `stop` (installed signal handlers), SIGINT / SIGTERM end a training run after its current step (Interrupted).
    `retrain`: run ids of finished runs to train again (runs.ask_retrain; remembered in the folder)."""
    deadline = time.monotonic() + 3600 * hours if hours is not None else None
    if preset.experiment['torch_threads']:
        torch.set_num_threads(preset.experiment['torch_threads'])
    if report_only and not (output / STUDY_FILE).is_file():
        raise ExperimentError(f'{output} holds no {STUDY_FILE}: nothing to report')
    batch = check_arms(preset, device)
    with own_folder(output) as lock:
        resumed = claim_folder(output, preset)
        runs.ask_retrain(output, retrain)
        say = Progress(output)
        if lock.taken_over:
            say(lock.taken_over)
        return _run_study(preset, output, device, deadline, report_only, stop, resumed, batch, say)


def own_folder(output: Path) -> RunLock:
    """Hold the study folder's lock (runtime.run_lock) for one invocation: a second invocation on the same folder
    would train beside the first and overwrite its report, so it is refused in one line naming the first."""
    try:
        return RunLock.acquire(output)
    except RunLockError:
        owner = describe_owner(live_owner(output) or {})
        raise ExperimentError(f'{output} is in use by another invocation of the study ({owner}): wait for it to end, '
                              'or stop it (SIGINT or SIGTERM: it saves a checkpoint first) and run the command again'
                              ) from None


def _run_study(preset: Preset, output: Path, device: torch.device, deadline: float | None, report_only: bool,
               stop: StopSignal | None, resumed: bool, batch: int, say: Progress) -> dict[str, Any]:
    """run_study's work once the folder is held."""
    bench_dir = Path(preset.experiment['benchmark_dir'] or REPO_ROOT.parent / 'shared' / 'benchmarks')
    benchmarks = find_benchmarks(bench_dir) if preset.experiment['benchmarks'] else []
    shown = output.relative_to(REPO_ROOT) if output.is_relative_to(REPO_ROOT) else output  # no machine folders in logs
    say(f'{"reporting" if report_only else "resuming" if resumed else "starting"} the study of {preset.path} in '
        f'{shown} on {device}'
        + ('' if benchmarks or not preset.experiment['benchmarks'] else f'; no benchmark LMDBs in {bench_dir}'))
    study = Study(preset, output, device, say, benchmarks, batch, deadline, train=not report_only, stop=stop)
    study.sweep()
    study.ablation()
    if not report_only:
        study.draw_tsne()
    result = study.write()
    say(f'wrote {shown / "results.md"} and {shown / "results.json"}' + (
        f'; {len(result["missing"])} run(s) left for the next invocation' if result['missing'] else ''))
    return result
