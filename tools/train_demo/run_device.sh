#!/bin/bash
# Runs the demo model's training on a GPU machine from the repository root and packs the results.
#   tools/train_demo/run_device.sh OUTDIR [train.py options...]
# Expects .demo-data/ (from prepare_data.py). Writes OUTDIR/train.log, OUTDIR/samples.txt and the
# model folder + golden files as a tar split into 15 MB parts (OUTDIR/result.tar.part-*);
# reassemble with: cat result.tar.part-* | tar -x
set -eo pipefail
out=$1; shift
work=$(mktemp -d)
export PYTHONUNBUFFERED=1
python3 tools/train_demo/train.py --data .demo-data --out "$work" "$@" 2>&1 | tee "$out/train.log"
cp "$work/samples.txt" "$out/" || true
tar -C "$work" -cf - dsv2-demo golden train_info.json | split -b 15M - "$out/result.tar.part-"
ls -la "$out"
