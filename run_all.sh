#!/usr/bin/env bash
# Regenerates every figure and table of the report: trains each method, evaluates it with every
# protocol (kNN, linear probe, fine-tuning vs supervised from scratch, t-SNE, retrieval, attention
# and Jaccard) and writes reports/REPORT.md. Resumable: re-run the same command after an interruption.
#   ./run_all.sh                          # cpu profile without a GPU, gpu profile with one
#   ./run_all.sh --profile smoke          # the whole pipeline in minutes (what the tests run)
#   ./run_all.sh --methods dino byol --seeds 0 1 2 --data cifar10 --data-root /data
# Options: ./run_all.sh --help (the driver is eval/pipeline.py; its tables hold every setting).
source "$(dirname "$0")/scripts/bootstrap.sh"   # .venv with the locked versions; sets ROOT, PATH
# Relative paths in the options are read from the current folder; the steps run from $ROOT.
exec python "$ROOT/eval/pipeline.py" "$@"   # by path: its header puts this checkout first on sys.path
