#!/usr/bin/env bash
# The GPU acceptance run: the CUDA test suite (`pytest -m cuda`), then one JSON of what passed,
# with the GPU's name, in gpu-acceptance/result.json and a text summary beside it. Installs
# nothing beyond the README's set-up; needs no network. Run from the repository root:
#   bash scripts/gpu-acceptance.sh
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
timeout 540 "$py" -m pytest -m cuda -q -rA -p no:cacheprovider tests/search/test_cuda.py \
  --junitxml="$out/junit.xml" > "$out/pytest.txt" 2>&1
rc=$?
"$py" - "$out" "$rc" "$(( $(date +%s) - start ))" <<'PY'
import json, sys, xml.etree.ElementTree as ET
out, rc, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tests = {}
for case in ET.parse(f"{out}/junit.xml").iter("testcase"):
    state = "passed"
    for tag in ("failure", "error", "skipped"):
        node = case.find(tag)
        if node is not None:
            state = f"{tag}: {(node.get('message') or '').splitlines()[0][:300]}"
    tests[case.get("name")] = {"state": state, "seconds": float(case.get("time", 0))}
result = {**json.load(open(f"{out}/device.json")), "rc": rc, "seconds": seconds, "tests": tests}
json.dump(result, open(f"{out}/result.json", "w"), indent=2)
lines = [f"GPU acceptance on {result['device'] or 'no GPU'}: exit {rc}, {seconds} s"]
lines += [f"  {name}: {t['state']} ({t['seconds']:.1f} s)" for name, t in tests.items()]
if not result["cuda"]:
    lines.append("no CUDA device here: every test skipped, nothing was checked")
open(f"{out}/summary.txt", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
# No GPU: exit 2, so that a skipped run is never read as a passed one.
if ! grep -q '"cuda": true' "$out/device.json"; then exit 2; fi
exit $rc
