#!/usr/bin/env bash
# The acceptance runs of the README's example table (mnist-sample, raw, m=20, b=32, 5000 iterations, seed 0).
# Usage: examples/acceptance.sh [OUT_DIR]   (finished runs are skipped, so it resumes)
set -eu
cd "$(dirname "$0")/.."
O=${1:-runs/acceptance}
r() { name=$1; shift; [ -f $O/$name/summary.json ] || byzrsa run --dataset mnist-sample --pixels raw --workers 20 --batch-size 32 --iterations 5000 --seed 0 --threads 1 --quiet --out $O/$name "$@" > /dev/null; }
r none-rsa --method rsa --lam 0.1 --lr 0.003
r none-ideal --method ideal-sgd --lr 1e-4
r none-geomed --method geomed --lr 1e-4
r none-krum --method krum --lr 1e-5
r none-median --method median --lr 1e-4
r sv8-rsa --method rsa --lam 0.07 --lr 0.001 --attack same-value --byzantine 8
r sv8-ideal --method ideal-sgd --lr 1e-4 --attack same-value --byzantine 8
r sv8-sgd --method sgd --lr 1e-4 --attack same-value --byzantine 8
r sv8-geomed --method geomed --lr 1e-4 --attack same-value --byzantine 8
r sv8-krum --method krum --lr 1e-3 --attack same-value --byzantine 8
r sv8-median --method median --lr 1e-5 --attack same-value --byzantine 8
r sf8-rsa --method rsa --lam 0.01 --lr 0.0003 --attack sign-flip --byzantine 8
r sf8-sgd --method sgd --lr 1e-4 --attack sign-flip --byzantine 8
r sf8-geomed --method geomed --lr 1e-4 --attack sign-flip --byzantine 8
r sf8-median --method median --lr 1e-4 --attack sign-flip --byzantine 8
r sf8-krum --method krum --lr 1e-4 --attack sign-flip --byzantine 8
r het8-rsa --method rsa --lam 0.5 --lr 0.0005 --split by-label --attack copy --copy-from 1 --byzantine 8
r het8-ideal --method ideal-sgd --lr 5e-5 --split by-label --attack copy --copy-from 1 --byzantine 8
r het8-sgd --method sgd --lr 5e-5 --split by-label --attack copy --copy-from 1 --byzantine 8
r het8-geomed --method geomed --lr 1e-4 --split by-label --attack copy --copy-from 1 --byzantine 8
r het8-krum --method krum --lr 1e-4 --split by-label --attack copy --copy-from 1 --byzantine 8
r het8-median --method median --lr 1e-6 --split by-label --attack copy --copy-from 1 --byzantine 8
O="$O" python - <<'PY'
import json, glob, os
for d in sorted(glob.glob(os.environ["O"] + "/*/summary.json")):
    s = json.load(open(d)); print(f"{os.path.basename(os.path.dirname(d)):14s} final={s['final_accuracy']:.4f} best={s['best_accuracy']:.4f} train_s={s['train_seconds']:.1f} wall_s={s['wall_seconds']:.1f}")
PY
