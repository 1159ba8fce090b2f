from pathlib import Path

from prunellm.data import resolve_data_dir


def test_explicit_dir_wins_over_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNELLM_DATA_DIR", "/elsewhere")
    assert resolve_data_dir(tmp_path) == tmp_path
    assert resolve_data_dir(str(tmp_path)) == tmp_path


def test_env_then_none(monkeypatch):
    monkeypatch.setenv("PRUNELLM_DATA_DIR", "/some/data")
    assert resolve_data_dir() == Path("/some/data")
    monkeypatch.delenv("PRUNELLM_DATA_DIR")
    assert resolve_data_dir() is None
