"""Benchmark harness: training throughput, ConAug, contrastive loss, input pipeline, inference and demo speed, and
the fastai Learner's own overhead per training step.

    python -m tools.benchmark --output results.json            # quarter-width model, batch 32, a few minutes on 2 cores
    python -m tools.benchmark --quick                           # tiny model, seconds (used by the test suite)
    python -m tools.benchmark --size official --batch 384 --device cuda --fit_memory --channels_last \
        --cudnn_benchmark --infer_batch 384 --output gpu.json     # the GPU rows (tools/gpu_check.sh runs this)
    python -m tools.benchmark --sections learner --threads 1    # Learner vs plain PyTorch loop, quarter width
    python -m tools.benchmark --sections onnx --official ../ABINet --onnx_profile   # PyTorch vs ONNX Runtime

Measures on the machine at hand, prints one table (metric, value, target, PASS/FAIL, note) and saves it as JSON.
Timings are medians over repeated runs after warm-up; targets are checked here, never in the tests.
"""
