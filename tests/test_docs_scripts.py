"""docs/scripts: the measurements that model cards cite run from a fresh checkout and print sane numbers."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_shape_probe_reads_shape_from_z_i_above_the_majority():
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "scripts" / "shape_probe.py"), "--n", "300"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"linear ([\d.]+), MLP ([\d.]+), majority ([\d.]+)", proc.stdout)
    assert m, proc.stdout
    linear, mlp, majority = map(float, m.groups())
    assert majority < 0.35  # five shapes, drawn uniformly
    assert linear > majority + 0.2 and mlp > majority + 0.2  # z_i of the bundled CLIP holds shape, weakly
    assert linear < 0.99  # ... but not perfectly (0.77 at n = 2400, the card's figure)


def test_shape_probe_rejects_a_missing_clip():
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "scripts" / "shape_probe.py"), "--n", "100",
                           "--clip", "/nonexistent/clip"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "/nonexistent/clip" in proc.stderr
    small = subprocess.run([sys.executable, str(ROOT / "docs" / "scripts" / "shape_probe.py"), "--n", "5"],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert small.returncode == 2 and "--n must be >= 60" in small.stderr and "Traceback" not in small.stderr


def test_readout_accuracy_prints_wilson_intervals_and_rejects_bad_options():
    script = str(ROOT / "docs" / "scripts" / "readout_accuracy.py")
    proc = subprocess.run([sys.executable, script, "--n", "40", "--seed", "5", "--conditions", "clean,degraded"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = re.findall(r"(shape|colour|size|position|count) +(\d+)/(\d+) = [\d.]+% +\[([\d.]+), ([\d.]+)\]", proc.stdout)
    assert len(rows) == 10                                # 5 metrics x 2 conditions
    for name, k, n, lo, hi in rows:
        assert int(k) == int(n) and float(hi) == 100.0   # the v2 read-out reads 64 px renders exactly
        assert float(lo) < 100.0                         # ... and n = 40 scenes cannot prove more than ~91%
    bad = subprocess.run([sys.executable, script, "--conditions", "fog"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert bad.returncode == 2 and "--conditions ['fog'] not known; accepted: clean" in bad.stderr
    assert "Traceback" not in bad.stderr
    wrong = subprocess.run([sys.executable, script, "--world", "2", "--model", "shapes-readout-v1"],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert wrong.returncode == 2 and "reads ShapesWorld v1 but ShapesWorld v2 was asked for" in wrong.stderr
