"""Does ConCLR help out of vocabulary? A resumable study: python -m experiments.oov_study --preset ... --output ...

preset.py reads and checks a preset, data.py renders the vocabularies and test sets, runs.py trains, evaluates and
caches one run, study.py orders the runs and writes the report, report.py and figures.py make it.
"""
