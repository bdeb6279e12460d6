"""What a run needs from its processes and files, below the models and the training loop: the process group and
its collectives (distributed), starting processes (launcher), stop signals, the run's claim on its folder
(run_lock), checkpoint files and atomic writes, one-line errors, quiet start-up, fastai 1.0.60's work-arounds and
matmul precision."""
