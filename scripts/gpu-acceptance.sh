#!/usr/bin/env bash
# The GPU acceptance run: the CUDA test suite (`pytest -m cuda`), then the GPU figures
# (`regsearch bench --device cuda --json`: throughput per model eager and compiled, the
# augmentation speed-up, the CIFAR-shaped airbench trial), all in one JSON with the GPU's name,
# gpu-acceptance/result.json, and a text summary beside it. Installs nothing beyond the
# README's set-up; needs no network; about 10 minutes at most. From the repository root:
#   bash scripts/gpu-acceptance.sh [OUT]
set -u
out=${1:-gpu-acceptance}
mkdir -p "$out"
py=${PYTHON:-python}
"$py" - <<'PY' > "$out/device.json"
import json, torch
ok = torch.cuda.is_available()
print(json.dumps({
    "cuda": ok,
    "device": torch.cuda.get_device_name(0) if ok else None,
    "torch": torch.__version__,
    "cuda_version": torch.version.cuda,
}))
PY
start=$(date +%s)
timeout 300 "$py" -m pytest -m cuda -n 0 -q -rA -p no:cacheprovider tests/search/test_cuda.py \
  --junitxml="$out/junit.xml" > "$out/pytest.txt" 2>&1
rc=$?
bench_rc=0
if grep -q '"cuda": true' "$out/device.json"; then
  timeout 270 "$py" -m search bench --device cuda --json > "$out/bench.json" 2> "$out/bench.txt"
  bench_rc=$?
fi
"$py" - "$out" "$rc" "$(( $(date +%s) - start ))" "$bench_rc" <<'PY'
import json, os, sys, xml.etree.ElementTree as ET
out, rc, seconds, bench_rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
tests = {}
for case in ET.parse(f"{out}/junit.xml").iter("testcase"):
    state = "passed"
    for tag in ("failure", "error", "skipped"):
        node = case.find(tag)
        if node is not None:
            state = f"{tag}: {(node.get('message') or '').splitlines()[0][:300]}"
    tests[case.get("name")] = {"state": state, "seconds": float(case.get("time", 0))}
bench = None
if os.path.exists(f"{out}/bench.json"):
    try:
        bench = json.load(open(f"{out}/bench.json"))
    except ValueError:
        bench = {"error": f"exit {bench_rc}; see bench.txt"}
result = {**json.load(open(f"{out}/device.json")), "rc": rc, "seconds": seconds, "tests": tests,
          "bench": bench, "bench_rc": bench_rc}
json.dump(result, open(f"{out}/result.json", "w"), indent=2)
lines = [f"GPU acceptance on {result['device'] or 'no GPU'}: exit {rc}, {seconds} s"]
lines += [f"  {name}: {t['state']} ({t['seconds']:.1f} s)" for name, t in tests.items()]
if bench and "error" not in bench:
    for name, modes in bench.get("train_images_per_second", {}).get("models", {}).items():
        lines.append(f"  {name}: " + ", ".join(
            f"{mode} {f['images_per_second']:,.0f} images/s (data {f['data_share']:.0%})"
            for mode, f in modes.items()))
    if "augment_speedup" in bench:
        lines.append(f"  augment_speedup: {bench['augment_speedup']['augment_speedup']}x")
    if "airbench_trial" in bench:
        a = bench["airbench_trial"]
        lines.append(f"  airbench trial: {a['seconds']} s for {a['epochs']} epochs of "
                     f"{a['images']:,} images, {a['airbench_ratio']}x airbench's time")
elif bench:
    lines.append(f"  bench: {bench['error']}")
if not result["cuda"]:
    lines.append("no CUDA device here: every test skipped, nothing was checked")
open(f"{out}/summary.txt", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
# No GPU: exit 2, so that a skipped run is never read as a passed one.
if ! grep -q '"cuda": true' "$out/device.json"; then exit 2; fi
if [ "$rc" -ne 0 ]; then exit "$rc"; fi
exit $bench_rc
