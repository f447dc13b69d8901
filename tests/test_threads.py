"""The command line's torch threads: the idle cores, overridable (explorer/threads.py, benchmarks/threads.py)."""
import pytest

from explorer.threads import default_threads


def test_idle_cores_rule(monkeypatch):
    monkeypatch.delenv("UNCLIP_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_threads(cpu_count=2, load=0.1) == 2      # idle: every core
    assert default_threads(cpu_count=2, load=1.2) == 1      # a training run beside us: one thread
    assert default_threads(cpu_count=2, load=5.0) == 1      # never below one
    assert default_threads(cpu_count=16, load=3.4) == 13


def test_overrides(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads(cpu_count=2, load=0.0) == 3
    monkeypatch.setenv("UNCLIP_THREADS", "5")
    assert default_threads(cpu_count=2, load=0.0) == 5
    monkeypatch.setenv("UNCLIP_THREADS", "0")
    with pytest.raises(ValueError, match=r"UNCLIP_THREADS='0' must be an integer >= 1"):
        default_threads()


def test_cli_reports_a_bad_override(monkeypatch, capsys):
    from explorer.cli import main
    monkeypatch.setenv("UNCLIP_THREADS", "many")
    assert main(["models"]) == 2
    assert "UNCLIP_THREADS='many' must be an integer >= 1" in capsys.readouterr().err
