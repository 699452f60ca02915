#!/usr/bin/env bash
# Sets everything up, then runs the main demo: a DDPM teacher and DxMI (T = 5, tau = 0.1) on
# 8 Gaussians, with plots. About 7 minutes on 2 CPU cores (docs/reliability.md). Runs land in
# runs/demo/; a second call continues what a stopped one left (--resume) and re-evaluates.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$root/scripts/setup.sh" | tail -n 1)"
out="${1:-$root/runs/demo}"
diffrl="$venv/bin/diffrl"
if [ -f "$out/teacher/config.yaml" ]; then
  "$diffrl" pretrain --out "$out/teacher" --resume
else
  "$diffrl" pretrain --preset 8gaussians --out "$out/teacher"
fi
if [ -f "$out/dxmi/config.yaml" ]; then
  "$diffrl" train --out "$out/dxmi" --resume
else
  "$diffrl" train --preset 8gaussians --teacher "$out/teacher" --out "$out/dxmi"
fi
echo "test metrics of the model selected on validation SW, then of the final state:"
"$diffrl" evaluate "$out/dxmi"
"$diffrl" evaluate "$out/dxmi" --which last
echo "the final state sampled with value guidance (lambda = 0.3, spec section 6):"
"$diffrl" evaluate "$out/dxmi" --which last --guidance 0.3
echo "plots: $out/dxmi/samples.png $out/dxmi/value_energy.png"
