"""The bad-input sweep of issue 16, kept: each case exits 2 with one `error:` line naming the problem, no traceback,
and no silent wrong result (before: 191 of 236 clean, 4 tracebacks, 13 silent results, 6 left-behind files)."""
import contextlib
import io
import os

import pytest
from PIL import Image

from explorer.cli import main


@pytest.fixture(scope="module")
def t(tmp_path_factory):
    t = tmp_path_factory.mktemp("sweep")
    (t / "file.txt").write_text("hello\n")
    (t / "rand.bin").write_bytes(os.urandom(300))
    Image.new("RGB", (64, 64), (200, 0, 0)).save(t / "red.png")
    (t / "caps.txt").write_text("a red circle\na blue square\n")
    assert main(["embed", str(t / "caps.txt"), "--model", "shapes-clip", "--out", str(t / "store"),
                 "--no-progress"]) == 0
    return t


def _cases(t):
    return [
        ["generate", "", "--out", str(t / "g")],
        ["generate", "a red circle", "--out", str(t / "file.txt")],
        ["generate", "a red circle", "--out", str(t / "g"), "--n", "0"],
        ["generate", "a red circle", "--out", str(t / "g"), "--size", "100"],
        ["generate", "a red circle", "--out", str(t / "g"), "--model", str(t / "rand.bin")],
        ["generate", "a red circle", "--out", str(t / "g"), "--seed", "-1"],
        ["generate", "a red circle", "--out", str(t / "g"), "--guidance", "nan"],
        ["inspect", str(t / "rand.bin")], ["inspect", str(t / "red.png")], ["inspect", str(t)],
        ["embed", str(t / "nope"), "--model", "shapes-clip", "--out", str(t / "s2")],
        ["embed", str(t / "caps.txt"), "--model", "no-such-clip", "--out", str(t / "s3")],
        ["embed", str(t / "caps.txt"), "--model", "shapes-clip", "--out", str(t / "file.txt")],
        ["embed", str(t / "rand.bin"), "--model", "shapes-clip", "--out", str(t / "s4")],
        ["neighbors", str(t / "store"), "--text", ""], ["neighbors", str(t / "store"), "--id", "nope"],
        ["neighbors", str(t / "store"), "--image", str(t / "rand.bin")],
        ["neighbors", str(t / "file.txt"), "--text", "x"], ["neighbors", str(t / "store"), "--text", "x", "-k", "-3"],
        ["project", str(t / "store"), "--out", str(t / "p"), "--kind", "image"],
        ["project", str(t / "file.txt"), "--out", str(t / "p")],
        ["metrics", str(t / "store"), str(t / "store"), "--out", str(t / "m"), "--kind", "image"],
        ["metrics", str(t / "store"), str(t / "store"), "--out", str(t / "m"), "--kind", "text"],
        ["interpolate", str(t / "red.png"), str(t / "rand.bin"), "--out", str(t / "i")],
        ["interpolate", str(t / "red.png"), str(t / "red.png"), "--out", str(t / "i"), "--n-steps", "1"],
        ["text-diff", str(t / "red.png"), "", "a blue circle", "--out", str(t / "t")],
        ["pca-recon", str(t / "red.png"), "--fit-store", str(t / "store"), "--out", str(t / "r")],
        ["binding", "run", str(t / "rand.bin"), "--model", "shapes-clip", "--out", str(t / "b")],
        ["binding", "run", str(t / "caps.txt"), "--model", "shapes-clip", "--out", str(t / "b")],
        ["binding", "compare", str(t), str(t)],
        ["binding", "make-suite", "--n", "0", "--out", str(t / "s.jsonl")],
        ["train", "prior", "--recipe", "nope", "--out", str(t / "tr")],
        ["train", "prior", "--out", str(t / "tr"), "--resume"],
        ["train", "clip", "--out", str(t / "tr2"), "--init-from", str(t / "nope")],
        ["import", "karlo", str(t / "nope"), "--out", str(t / "k")],
        ["evaluate", str(t / "nope"), "--out", str(t / "e")],
        ["demo", "--out", str(t / "file.txt")],
        ["shapes", "export", str(t / "x"), "--world", "7"],
        ["shapes", "export", str(t / "x"), "--split", "weird"],
        ["dashboard", "--store", str(t / "file.txt")],
    ]
    


@pytest.mark.parametrize("k", range(40))
def test_bad_input_is_one_clean_error(t, k, monkeypatch):
    monkeypatch.setenv("UNCLIP_THREADS", "1")
    argv = _cases(t)[k]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    lines = err.getvalue().strip().splitlines()
    assert rc == 2 and lines and lines[-1].startswith("error: "), (argv, err.getvalue()[-500:])
    assert "Traceback" not in err.getvalue()
