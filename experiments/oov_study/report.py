"""The study's report: statistics over seeds, the markdown tables, learning curves and the t-SNE pair.

Everything here is a function of the finished runs' records (run.json), so a resumed study writes the same report
as an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

from scipy import stats

from experiments.oov_study.data import SET_LABELS, SYNTHETIC_SETS

METRICS = ('cwr', 'ccr')
OOV_SETS = SYNTHETIC_SETS[1:]


def mean_spread(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); the spread is None for a single value."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def fmt(mean: float | None, spread: float | None, scale: float = 100.0, signed: bool = False) -> str:
    """`mean ± spread` in percent (points), two decimals; the mean alone when there is no spread."""
    if mean is None or math.isnan(mean):
        return 'n/a'
    text = f'{scale * mean:+.2f}' if signed else f'{scale * mean:.2f}'
    return text if spread is None else f'{text} ± {scale * spread:.2f}'


def set_value(record: dict[str, Any], name: str, metric: str) -> float:
    """A run's final `metric` on a test set; '<benchmark>:in' / ':out' are its lexicon parts (cwr only)."""
    if ':' in name:
        bench, part = name.split(':')
        return record['lexicon'][bench][part]['cwr'] if metric == 'cwr' else math.nan
    return record['final'][name][metric]


def gap_value(record: dict[str, Any], oov: str, metric: str) -> float:
    """IV minus an OOV set, in the run's own numbers."""
    return set_value(record, 'iv', metric) - set_value(record, oov, metric)


def stat(records: dict[int, dict[str, Any]], value: Any) -> dict[str, Any]:
    """{'mean', 'sd', 'values' (by seed)} of value(record) over the seeds of `records`."""
    values = {seed: value(r) for seed, r in sorted(records.items())}
    mean, sd = mean_spread([v for v in values.values() if not math.isnan(v)])
    return {'mean': mean, 'sd': sd, 'values': values}


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """Two-sided `level` interval of the mean, Student t with n - 1 degrees of freedom: mean ± t * sd / sqrt(n);
    None with fewer than two values."""
    values = [float(v) for v in values]
    mean, sd = mean_spread(values)
    if sd is None:
        return None
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1)) * sd / math.sqrt(len(values))
    return mean - half, mean + half


def paired(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]], value: Any) -> dict[str, Any]:
    """Per-seed difference value(b) - value(a) over the seeds both have, with its 95 % t interval and how many
    seeds went up, down or neither."""
    values = {s: value(b[s]) - value(a[s]) for s in sorted(set(a) & set(b))}
    finite = [v for v in values.values() if not math.isnan(v)]
    mean, sd = mean_spread(finite)
    interval = t_interval(finite)
    return {'mean': mean, 'sd': sd, 'values': values, 'ci95': None if interval is None else list(interval),
            'up': sum(v > 0 for v in finite), 'down': sum(v < 0 for v in finite),
            'even': sum(v == 0 for v in finite)}


def paired_cwr(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]], sets: Sequence[str]) -> dict[str, Any]:
    """Per-seed cwr differences b - a on every set and every IV - OOV gap (`paired` each)."""
    return {**{name: paired(a, b, lambda r, n=name: set_value(r, n, 'cwr')) for name in sets},
            **{f'gap_{oov}': paired(a, b, lambda r, o=oov: gap_value(r, o, 'cwr')) for oov in OOV_SETS}}


def summarise(columns: dict[str, dict[int, dict[str, Any]]], sets: Sequence[str], baseline: str
              ) -> dict[str, Any]:
    """For each column (arm -> {seed: record}): every set's cwr/ccr, every IV - OOV gap, the per-seed differences
    from the baseline column and, under `minus_arms`, from each earlier non-baseline column (ConCLR minus ConAug:
    what the contrastive term adds to the augmentation)."""
    table: dict[str, Any] = {}
    for arm, records in columns.items():
        entry: dict[str, Any] = {'seeds': sorted(records), 'steps': sorted({r['steps'] for r in records.values()}),
                                 'sets': {}, 'gaps': {}, 'minus_baseline': {}, 'minus_arms': {}}
        for name in sets:
            entry['sets'][name] = {m: stat(records, lambda r, n=name, m=m: set_value(r, n, m)) for m in METRICS}
        for oov in OOV_SETS:
            entry['gaps'][oov] = {m: stat(records, lambda r, o=oov, m=m: gap_value(r, o, m)) for m in METRICS}
        if arm != baseline and baseline in columns:
            entry['minus_baseline'] = paired_cwr(columns[baseline], records, sets)
            entry['minus_arms'] = {other: paired_cwr(columns[other], records, sets) for other in table
                                   if other != baseline and set(columns[other]) & set(records)}
        table[arm] = entry
    return table


def set_label(name: str) -> str:
    """A test set's row label."""
    if ':' in name:
        bench, part = name.split(':')
        return f'{bench}, {"in V" if part == "in" else "not in V"}'
    return SET_LABELS.get(name, name)


def samples_of(columns: dict[str, dict[int, dict[str, Any]]], name: str) -> int:
    """Images of a test set (from any run)."""
    record = next(r for records in columns.values() for r in records.values())
    if ':' in name:
        bench, part = name.split(':')
        return record['lexicon'][bench][part]['samples']
    return record['final'][name]['samples']


def metric_table(table: dict[str, Any], labels: dict[str, str], sets: Sequence[str], metric: str,
                 samples: dict[str, int]) -> list[str]:
    """One markdown table: a row per set and per IV - OOV gap, a column per arm (mean ± sd over seeds)."""
    arms = list(table)
    head = ' | '.join(f'{labels[a]} (n={len(table[a]["seeds"])}, {"/".join(map(str, table[a]["steps"]))} steps)'
                      for a in arms)
    lines = [f'| {metric} | images | {head} |', '|---|---:|' + '---:|' * len(arms)]
    for name in sets:
        if metric != 'cwr' and ':' in name:
            continue
        cells = ' | '.join(fmt(table[a]['sets'][name][metric]['mean'], table[a]['sets'][name][metric]['sd'])
                           for a in arms)
        lines.append(f'| {set_label(name)} | {samples[name]} | {cells} |')
    for oov in OOV_SETS:
        cells = ' | '.join(fmt(table[a]['gaps'][oov][metric]['mean'], table[a]['gaps'][oov][metric]['sd'],
                               signed=True) for a in arms)
        lines.append(f'| gap IV − {SET_LABELS[oov]} (points) | | {cells} |')
    return lines


def ablation_table(table: dict[str, Any], labels: dict[str, str], baseline: str) -> list[str]:
    """Per-seed differences from the baseline (cwr points, mean ± sd over the seeds both have), each with its
    95 % t interval and the seeds that went up / down."""
    return paired_table([(labels[arm], labels[baseline], entry['minus_baseline']) for arm, entry in table.items()
                         if entry['minus_baseline']])


def between_arms_table(table: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """The same per-seed differences between two non-baseline arms, each later arm minus each earlier one."""
    return paired_table([(labels[arm], labels[other], diff) for arm, entry in table.items()
                         for other, diff in entry.get('minus_arms', {}).items()])


def paired_table(rows: Sequence[tuple[str, str, dict[str, Any]]]) -> list[str]:
    """A markdown table of paired differences, one row per (arm, minus arm, differences)."""
    sets = ['iv', 'oov_words', 'oov_random', 'oov_chars']
    lines = ['| difference (paired seeds) | seeds | ' + ' | '.join(f'{SET_LABELS[n]} cwr' for n in sets)
             + ' | gap IV − OOV-words | gap IV − OOV-random |', '|---|---:|' + '---:|' * (len(sets) + 2)]
    for arm, minus, diff in rows:
        cells = [diff[n] for n in sets] + [diff['gap_oov_words'], diff['gap_oov_random']]
        lines.append(f'| {arm} − {minus} | {len(diff["iv"]["values"])} | '
                     + ' | '.join(_paired_cell(c) for c in cells) + ' |')
    return lines


def _paired_cell(diff: dict[str, Any]) -> str:
    text = fmt(diff['mean'], diff['sd'], signed=True)
    interval = diff.get('ci95')
    if interval is not None:
        text += f' [{100 * interval[0]:+.2f}, {100 * interval[1]:+.2f}]'
    if 'up' in diff:
        text += f' {diff["up"]}↑ {diff["down"]}↓'
    return text


def sweep_table(sweep: dict[str, Any]) -> list[str]:
    """The vocabulary-size sweep: the baseline's IV and OOV-words cwr and their gap for each |V|."""
    lines = ['| \\|V\\| | renders per word | seeds | IV cwr | OOV-words cwr | gap IV − OOV-words (points) | |',
             '|---:|---:|---:|---:|---:|---:|---|']
    for size, row in sweep['sizes'].items():
        mark = 'chosen' if int(size) == sweep['chosen'] else ''
        lines.append(f'| {size} | {row["renders_per_word"]:.1f} | {row["seeds"]} | {_cell(row["iv"])} | '
                     f'{_cell(row["oov_words"])} | {_cell(row["gap"], True)} | {mark} |')
    return lines


def _cell(value: dict[str, Any], signed: bool = False) -> str:
    return fmt(value['mean'], value['sd'], signed=signed)


def _intro(result: dict[str, Any]) -> list[str]:
    e = result['experiment']
    size = result['vocab_size']
    arms = ', '.join(f'{a["label"]} (seeds {a["seeds"]})' for a in result['arms'].values())
    status = ('' if result['complete'] else
              f'**Partial report: {len(result["missing"])} run(s) still to train** ({", ".join(result["missing"])}). ')
    real = [s for s in result['test_sets'] if s not in SYNTHETIC_SETS and ':' not in s]
    return ['# Does ConCLR help out of vocabulary?', '', status + f'Preset `{result["preset"]}`; every run '
            f'{result["steps"]} optimiser steps unless marked; arms: {arms}.', '',
            f'Training vocabulary V: {size if size is not None else "(not chosen yet)"} English words of '
            f'{e["min_len"]}-{e["max_len"]} letters, {e["train_images"]} training renders. Synthetic test sets '
            f'(same fonts and rendering, {e["test_images"]} renders each): IV = new renders of V; OOV-words = '
            f'{e["oov_vocab_size"]} English words not in V; OOV-random = {e["oov_vocab_size"]} random strings over '
            f'V\'s own alphabet; OOV-unseen-characters = {e["oov_vocab_size"]} random [a-z0-9] strings each holding '
            'a character V never shows. Every OOV vocabulary has V\'s length histogram.'
            + (f' Real sets: {", ".join(real)}, each also split into the words in V and the others (Wan et al., '
               'CVPR 2020).' if real else ' No real benchmark sets.'), '',
            'cwr = word accuracy, ccr = character accuracy (case-insensitive, [0-9a-z]), in %, mean ± sample '
            'standard deviation over seeds (no spread with one seed); gaps are IV minus OOV in points. Each run is '
            'evaluated at its final step (never at its best evaluation).', '']


def _wall_clock_text(measured: dict[str, dict[str, Any]]) -> str:
    parts = [f'{key}: {m["reference"]:.3f} s vs {m["baseline"]:.3f} s per step (ratio '
             f'{m["reference"] / m["baseline"]:.3f}; {m["machine"]})' for key, m in measured.items()]
    return '; '.join(parts) + '.' if parts else 'not measured yet.'


def _sections(result: dict[str, Any], labels: dict[str, str]) -> list[str]:
    lines: list[str] = []
    if result['sweep']['sizes']:
        lines += ['## Vocabulary-size sweep', '', f'{labels[result["experiment"]["baseline"]]} alone, the same '
                  'steps and training renders for every |V|. The study uses the largest |V| whose IV − OOV-words '
                  f'gap is at least {100 * result["experiment"]["min_gap"]:.0f} points with IV cwr at least '
                  f'{100 * result["experiment"]["min_iv"]:.0f} % ({result["sweep"]["why"]}).', '']
        lines += sweep_table(result['sweep']) + ['']
    samples = result['samples']
    for key, title, text in (
            ('same_steps', 'Same number of optimiser steps', 'Every arm: same data, model size, schedule and steps.'),
            ('same_wall_clock', 'Same wall-clock training time', 'The baseline trained for as many steps as fit in '
             'the reference arm\'s training time (evaluation excluded), its schedule stretched to its own length. '
             'The two models\' step times were measured side by side in one process (fastai Learner, training\'s '
             'callbacks, alternating rounds, median) on the machine that trained the baseline\'s run, not taken '
             'from the two runs, which may come from different machines and machine speeds: '
             + _wall_clock_text(result.get('wall_clock', {})))):
        table = result['tables'].get(key)
        if not table:
            continue
        lines += [f'## {title}', '', text, '']
        for metric in METRICS:
            lines += metric_table(table, labels, result['test_sets'], metric, samples) + ['']
        if key == 'same_steps':
            lines += ['### Ablation: each arm minus the baseline, seed by seed', '']
            lines += ablation_table(table, labels, result['experiment']['baseline'])
            between = between_arms_table(table, labels)
            if len(between) > 2:
                lines += ['', '### Between arms: each arm minus an earlier one, seed by seed', '',
                          'With a ConAug-only arm, ConCLR minus it is what the contrastive term adds to the '
                          'augmentation.', '']
                lines += between
            lines += ['', 'Each cell: mean ± sd of the per-seed differences (points), its 95 % interval [t with n − 1 '
                      'degrees of freedom: mean ± t(0.975, n − 1) · sd / √n; none with one seed], and how many seeds '
                      'went up (↑) and down (↓), over the seeds both arms have.', '']
    return lines


def data_digests(records: Iterable[dict[str, Any]]) -> dict[int, set[str]]:
    """|V| -> the training-data digests its runs recorded (none for runs made before runs recorded them)."""
    seen: dict[int, set[str]] = {}
    for r in records:
        if r.get('data_digest'):
            seen.setdefault(r['spec']['vocab_size'], set()).add(r['data_digest'])
    return seen


def mixed_data(runs: dict[str, dict[str, Any]]) -> list[int]:
    """The |V| whose runs recorded more than one training-data digest (renders that differ between machines)."""
    return sorted(size for size, digests in data_digests(runs.values()).items() if len(digests) > 1)


def _busy(record: dict[str, Any]) -> str:
    busy = record.get('cores_busy')
    return 'not recorded' if busy is None else f'{busy:.2f} of {record["torch_threads"]}'


def _wall(record: dict[str, Any]) -> str:
    resumed = record.get('resumed_from')
    return f'{record["wall_seconds"]:.1f}' + ('' if resumed is None else f' (from step {resumed})')


def _runs_table(result: dict[str, Any]) -> list[str]:
    lines = ['## Runs', '', '| run | parameters | steps | training s | s/step | img/s | evaluation s | '
             'main.train wall s | CPU cores busy | training data | test sets |', '|---|' + '---:|' * 8 + '---|---|']
    superseded = result.get('superseded', {})
    builds = {b['digest']: b['test_digests'] for b in result.get('data', {}).values() if b.get('test_digests')}
    for run_id, r in result['runs'].items():
        name = f'{run_id} (superseded by {superseded[run_id]})' if run_id in superseded else run_id
        lines.append(f'| {name} | {r["parameters"]:,} | {r["steps"]} | {r["train_seconds"]:.1f} | '
                     f'{r["seconds_per_step"]:.3f} | {r["images_per_second"]:.1f} | {r["test_seconds"]:.1f} | '
                     f'{_wall(r)} | {_busy(r)} | '
                     f'{(r.get("data_digest") or "not recorded")[:12]} | {_test_digests(r, builds)} |')
    mixed = mixed_data(result['runs'])
    lines += ['', 'Training seconds are the sums of the training callback\'s timed windows (no evaluation, '
              'checkpoint saving or set-up); img/s counts original images (a ConCLR step also trains on two '
              'ConAug views of its batch); evaluation s = the main.test runs behind the curves and tables; '
              'main.train wall s of a run resumed from a periodic checkpoint covers its last invocation only. '
              'CPU cores busy = the training process\'s CPU seconds per second of its timed windows, of its '
              'torch threads: well below the thread count means other jobs shared the CPU and its seconds are '
              'inflated. Training data = sha256 of the training renders (label and image bytes), so runs made on '
              'different machines can be checked to have seen the same images; test sets = the first 8 hex digits '
              'of the sha256 of IV, OOV-words, OOV-random and OOV-unseen-characters (full digests in results.json). '
              'A run that finished before runs recorded them says "not recorded"; where its training-data digest is '
              'that of a build in this folder, the build\'s test-set digests follow in parentheses: the sets '
              'rendered with its training data (inferred from the same seeded build, not recorded by the run; '
              'results.json `data`).']
    if superseded:
        lines += ['', f'**Superseded: {", ".join(superseded)}**: listed above but counted in no table of the '
                  'ablation; each one\'s retrain (run id ending -r1) stands for it (the vocabulary sweep still shows a '
                  'superseded sweep run until its retrain has finished).', '']
        lines += [_superseded_line(result, old, new) for old, new in superseded.items()]
    if mixed:
        lines += ['', f'**Warning: the runs of |V| = {", ".join(map(str, mixed))} trained on different renders** '
                  '(the machines rendering them had different fonts?): their comparison is confounded.']
    return lines


def _superseded_line(result: dict[str, Any], old: str, new: str) -> str:
    """One bullet: why `old` was superseded and, once its retrain has finished, the two runs' final numbers."""
    why = result['superseded_why'][old]
    line = f'- {old}: {why}. Retrain {new}:'
    if new not in result['runs']:
        return line + ' not finished yet.'
    finals = [result['runs'][i]['final'] for i in (old, new)]
    shown = ', '.join(f'{SET_LABELS[name]} {100 * finals[0][name]["cwr"]:.1f} -> {100 * finals[1][name]["cwr"]:.1f} %'
                      for name in ('iv', 'oov_words') if all(name in f for f in finals))
    return f'{line} final cwr (superseded -> retrain) {shown}.'


def _test_digests(record: dict[str, Any], builds: dict[str, dict[str, str]]) -> str:
    def short(digests: dict[str, str]) -> str:
        return ' '.join(digests[name][:8] for name in SYNTHETIC_SETS if name in digests)

    if record.get('test_digests'):
        return short(record['test_digests'])
    build = builds.get(record.get('data_digest'))
    return 'not recorded' + (f' (build: {short(build)})' if build else '')


def markdown(result: dict[str, Any]) -> str:
    """results.md of a results.json dict."""
    labels = {name: arm['label'] for name, arm in result['arms'].items()}
    baseline = result['experiment']['baseline']
    labels[f'{baseline}_wall'] = f'{labels[baseline]} (equal wall-clock)'
    lines = _intro(result) + _sections(result, labels) + _runs_table(result)
    lines += ['', '## Figures', '']
    lines += [f'- {text}: `{name}`' for name, text in result['figures'].items()]
    env = result['environment']
    lines += ['', '## Environment', '',
              f'- device: {env["device"]} ({env["device_name"]}); CPUs: {env["cpus_usable"]} usable of '
              f'{env["cpu_count"]}; torch threads {env["torch_threads"]}',
              f'- torch {env["torch"]}, fastai {env["fastai"]}, Python {env["python"]}',
              f'- training and evaluation time of all runs: {result["run_seconds"] / 3600:.2f} h; per-run logs, '
              'TensorBoard events and results under `runs/`, configs under `configs/`']
    return '\n'.join(lines) + '\n'
